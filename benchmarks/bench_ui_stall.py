"""Longest Qt event-loop stall while the Segment widget predicts (target <= 100 ms).

A 5 ms QTimer records when the event loop gets to run; the longest gap between two ticks while
the worker runs (and while the result layers are added) is the worst freeze a user would feel.
Run under a display, e.g. ``xvfb-run -a .venv/bin/python benchmarks/bench_ui_stall.py``.
``--lazy`` makes the layer a dask array, so the widget takes the large-image path: blocks into a
zarr-backed labels layer that is shown and refreshed while it fills (multiscale above 4096 px), e.g.
``--lazy --size 6144 --runs 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import synthetic_image  # noqa: E402


def _worst(gaps) -> str:
    return f"{max(gaps) * 1000:.0f} ms" if gaps else "n/a"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=2, help="run 1 adds the layers, later runs update them")
    parser.add_argument("--lazy", action="store_true", help="a dask-backed layer (the large-image path)")
    args = parser.parse_args()
    import napari
    from qtpy.QtCore import QTimer

    from napari_unet.widgets.segment import SegmentWidget
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    image = synthetic_image(args.size)
    if args.lazy:
        import dask.array as da

        image = da.from_array(image, chunks=1024)
    viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.add_probabilities.value = True
    app = QApplication.instance()
    while not widget._torch_ready:  # the dock's warm-up (PyTorch, the modules a run needs)
        app.processEvents()
        time.sleep(0.01)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)

    for run in range(1, args.runs + 1):
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(5)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        # the moment the result reaches the Qt thread: from then on the widget is adding layers
        result_at: list[float] = []
        on_result = SegmentWidget._on_result
        widget._on_result = lambda *a: (result_at.append(time.perf_counter()), on_result(widget, *a))
        start = time.perf_counter()
        widget.run_button.native.click()
        while widget.running:
            app.processEvents()
            time.sleep(0.002)
        for _ in range(100):  # let the layers draw
            app.processEvents()
            time.sleep(0.002)
        timer.stop()
        computed = result_at[0] if result_at else None
        pairs = list(zip(ticks, ticks[1:]))
        computing = [b - a for a, b in pairs if computed is None or b <= computed]
        adding = [b - a for a, b in pairs if computed is not None and b > computed]
        print(f"image {args.size}x{args.size}, run {run}: {time.perf_counter() - start:.1f} s; longest event-loop "
              f"stall while predicting {_worst(computing)}, while adding/updating the result layers "
              f"{_worst(adding)} (target <= 100 ms); status: {widget.status.value.splitlines()[0]}")
    viewer.close()


if __name__ == "__main__":
    main()
