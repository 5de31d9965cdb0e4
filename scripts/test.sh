#!/usr/bin/env bash
# Run the whole test suite headless. napari's viewer needs OpenGL, so without a display the
# tests run inside a virtual X server (Xvfb + Mesa), which scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "No .venv: run 'bash scripts/setup.sh' first." >&2; exit 2; }
export PYTHONUNBUFFERED=1 NAPARI_UNET_TESTING=1
# keep torch and BLAS from oversubscribing small machines
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
ARGS=(-ra --timeout 900 --durations 15 "$@")
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest "${ARGS[@]}"
fi
exec "$PY" -m pytest "${ARGS[@]}"
