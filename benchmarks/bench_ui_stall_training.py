"""Longest Qt event-loop stall while the Fine-tune widget trains (target <= 100 ms).

A 5 ms QTimer records when the event loop gets to run; every 50 ms another timer paints a brush
stroke into the corrected layer (as a user keeps correcting while the model trains). The longest
gap between two ticks from Train to the saved model is the worst freeze a user would feel. It is
also given per phase (Train to the first step, training, after the last step), with the longest
waits of a Python thread for the GIL (a long one means some thread held it, e.g. importing) and
the modules the run imported. ``--no-training`` paints for as long without clicking Train: the
stalls of napari's own drawing on this machine, the floor under the training run's.
Run under a display, e.g. ``xvfb-run -a .venv/bin/python benchmarks/bench_ui_stall_training.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--niceness", type=int, default=None,
                        help="the worker threads' Linux nice value (default: the plugin's, 10; 0 = as napari's)")
    parser.add_argument("--no-training", action="store_true",
                        help="only paint, for --minutes plus 10 s: the viewer's own stalls, without training")
    args = parser.parse_args()
    if args.niceness is not None:
        import napari_unet.widgets._base as base

        base.BACKGROUND_NICENESS = args.niceness
    os.environ.setdefault("NAPARI_UNET_MODEL_DIR", tempfile.mkdtemp(prefix="napari-unet-bench-"))
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    truth.metadata["napari_unet"] = {"kind": "labels", "source": image.name}
    _, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    correct.source.value = truth
    corrected = correct.start_correcting()
    correct.mark_reviewed("image")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    app = QApplication.instance()
    while not widget._torch_ready:
        app.processEvents()
        time.sleep(0.01)
    widget.model.value = "unet"
    widget.minutes.value = args.minutes

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    rng = np.random.default_rng(0)
    strokes = []

    def paint():  # a user painting while the model trains
        t = time.perf_counter()
        y, x = rng.integers(10, np.asarray(corrected.data.shape) - 10)
        corrected.paint((int(y), int(x)), 1000 + len(strokes))
        strokes.append(time.perf_counter() - t)

    painter = QTimer()
    painter.setInterval(50)
    painter.timeout.connect(paint)
    steps: list[float] = []  # when the Qt thread handled each training step's event
    on_progress = widget._on_progress

    def record_step(event):
        if event.step > 0 and not event.phase:
            steps.append(time.perf_counter())
        on_progress(event)

    widget._on_progress = record_step
    # A Python thread that wakes every millisecond: a long gap in its wake-ups means some
    # thread held the GIL in one long C call (a Python thread lets go of it every 5 ms).
    probe: list[float] = []
    probing = threading.Event()

    def gil_probe():
        while not probing.is_set():
            probe.append(time.perf_counter())
            time.sleep(0.001)

    threading.Thread(target=gil_probe, daemon=True).start()
    timer.start()
    painter.start()
    start = time.perf_counter()
    imported = set(sys.modules)
    if args.no_training:
        while time.perf_counter() - start < args.minutes * 60 + 10:
            app.processEvents()
            time.sleep(0.002)
    else:
        widget.train_button.native.click()
        while widget.running:
            app.processEvents()
            time.sleep(0.002)
    timer.stop()
    painter.stop()
    gaps = np.diff(ticks)
    ends = np.asarray(ticks[1:])
    if steps:  # where the stalls fall: the click (progress bar, preparation), the steps, the saving
        phases = {"from Train to the first step": ends <= steps[0],
                  "while training (first to last step)": (ends > steps[0]) & (ends <= steps[-1]),
                  "after the last step (validation, saving, result)": ends > steps[-1]}
        for phase, inside in phases.items():
            if inside.any():
                print(f"{phase}: longest stall {gaps[inside].max() * 1000:.0f} ms, "
                      f"99th percentile {np.percentile(gaps[inside], 99) * 1000:.0f} ms, "
                      f"{(ends[inside][-1] - ends[inside][0]):.1f} s")
        worst = np.argsort(gaps)[::-1][:5]
        print("longest stalls (ms @ s after Train): " +
              ", ".join(f"{gaps[i] * 1000:.0f} @ {ends[i] - start:.1f}" for i in worst))
    probing.set()
    late = sorted(set(sys.modules) - imported)
    if late:  # imports hold the GIL: each one is a stall of the viewer too
        packages = collections.Counter(name.split(".")[0] for name in late)
        print(f"{len(late)} modules imported after Train: " +
              ", ".join(f"{package} ({count})" for package, count in packages.most_common()))
    held = np.diff(probe)
    worst = np.argsort(held)[::-1][:5]
    print("longest GIL waits of a 1 ms Python thread (ms @ s after the start): " +
          ", ".join(f"{held[i] * 1000:.0f} @ {probe[i + 1] - start:.1f}" for i in worst))
    what = "painting only, no training" if args.no_training else f"fine-tuning {args.minutes:g} min on the nuclei sample"
    print(f"{what}: {time.perf_counter() - start:.0f} s; "
          f"{len(strokes)} brush strokes painted meanwhile (median {np.median(strokes) * 1000:.1f} ms each); "
          f"longest event-loop stall {gaps.max() * 1000:.0f} ms, 99th percentile {np.percentile(gaps, 99) * 1000:.0f} ms "
          f"(target <= 100 ms); > 50 ms: {(gaps > 0.05).sum()} times; status: {widget.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
