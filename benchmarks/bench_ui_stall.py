"""Longest Qt event-loop stall while the Segment widget predicts (target <= 100 ms).

A 5 ms QTimer records when the event loop gets to run; the longest gap between two ticks while
the worker runs (and while the result layers are added) is the worst freeze a user would feel.
Run under a display, e.g. ``xvfb-run -a .venv/bin/python benchmarks/bench_ui_stall.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import synthetic_image  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.add_image(synthetic_image(args.size), name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.add_probabilities.value = True
    app = QApplication.instance()
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    widget.run_button.native.click()
    computed = None
    while widget.running:
        if computed is None and widget._job_done:
            computed = time.perf_counter()  # the worker has returned; layers are being added
        app.processEvents()
        time.sleep(0.002)
    for _ in range(100):  # let the layers draw
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    pairs = list(zip(ticks, ticks[1:]))
    computing = [b - a for a, b in pairs if computed is None or b < computed]
    adding = [b - a for a, b in pairs if computed is not None and b >= computed]

    def worst(gaps):
        return f"{max(gaps) * 1000:.0f} ms" if gaps else "n/a"

    print(f"image {args.size}x{args.size}: ran {time.perf_counter() - start:.1f} s, {len(ticks)} ticks; longest "
          f"event-loop stall while predicting {worst(computing)}, while adding the result layers {worst(adding)} "
          f"(target <= 100 ms); status: {widget.status.value.splitlines()[0]}")
    viewer.close()


if __name__ == "__main__":
    main()
