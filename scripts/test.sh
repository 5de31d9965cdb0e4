#!/usr/bin/env bash
# Run the whole test suite headless. napari's viewer needs OpenGL, so without a display the
# tests run inside a virtual X server (Xvfb + Mesa), which scripts/setup.sh installs.
# With no arguments, the widget tests then run a second time under PyQt6 (QT_API=pyqt6), when it
# is installed (the test extras install it): PyQt5 stays the default binding, PyQt6 must work too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "No .venv: run 'bash scripts/setup.sh' first." >&2; exit 2; }
export PYTHONUNBUFFERED=1 NAPARI_UNET_TESTING=1
# keep torch and BLAS from oversubscribing small machines
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
run_pytest() {
  if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
    xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest "$@"
  else
    "$PY" -m pytest "$@"
  fi
}
ARGS=(-ra --timeout 900 --durations 15)
if [ $# -gt 0 ]; then
  run_pytest "${ARGS[@]}" "$@"
  exit
fi
run_pytest "${ARGS[@]}"
if "$PY" -c "import PyQt6.QtCore" 2>/dev/null; then
  echo "== the widget tests again under PyQt6 (QT_API=pyqt6) =="
  QT_API=pyqt6 run_pytest "${ARGS[@]}" -q tests/widgets
else
  echo "PyQt6 is not installed: the widget tests ran under PyQt5 only" >&2
fi
