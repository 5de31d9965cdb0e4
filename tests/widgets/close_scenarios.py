"""Scenarios that end napari while the plugin works, each in its own interpreter (a crash or a
freeze must not take the test run with it). Run by ``test_reliability.py``:

    python tests/widgets/close_scenarios.py SCENARIO OUT_DIR

Each one drives a real viewer inside ``napari.run()`` with timers, as a user's clicks would
arrive, closes the viewer at the scenario's point, and writes ``OUT_DIR/report.json`` with what
it saw (the longest gap between event-loop ticks, the plugin's jobs still running, files).
"""

from __future__ import annotations

import faulthandler
import json
import sys
import time
from pathlib import Path

faulthandler.enable()

import napari  # noqa: E402
import numpy as np  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

SCENARIO, OUT = sys.argv[1], Path(sys.argv[2])
report: dict = {"scenario": SCENARIO, "steps": []}
ticks: list[float] = []


def tick():
    ticks.append(time.perf_counter())


def later(ms, fn):
    QTimer.singleShot(ms, fn)


def when(condition, fn, timeout_s=240.0, started=None):
    """Call ``fn`` once ``condition()`` holds (polled from the event loop)."""
    started = started or time.perf_counter()
    if condition():
        fn()
    elif time.perf_counter() - started > timeout_s:
        report["steps"].append(f"timed out waiting for {getattr(condition, '__name__', 'a condition')}")
        close()
    else:
        later(100, lambda: when(condition, fn, timeout_s, started))


def step(text):
    report["steps"].append(f"{time.perf_counter() - t0:.1f}s {text}")


def close():
    step("closing the viewer")
    viewer.close()


def dock(name):
    return viewer.window.add_plugin_dock_widget("napari-unet", name)[1]


def corrected_nuclei(shape=(256, 256)):
    """An image and a corrected, reviewed copy of its ground truth (as the Correct dock leaves it)."""
    from napari.layers import Labels

    from napari_unet.synthetic import fluorescent_nuclei
    from napari_unet.widgets._layers import KEY

    image, labels = fluorescent_nuclei(shape, 20, seed=0)
    viewer.add_image(image, name="nuclei")
    viewer.add_layer(Labels(labels.astype(np.uint16), name="nuclei corrected",
                            metadata={KEY: {"kind": "corrections", "source": "nuclei",
                                                     "reviewed": "nuclei corrected reviewed"}}))
    viewer.add_layer(Labels(np.ones(shape, np.uint8), name="nuclei corrected reviewed",
                            metadata={KEY: {"kind": "reviewed", "corrections": "nuclei corrected"}}))


# -- the scenarios ------------------------------------------------------------------------------
def warm_up_all_docks():
    """Dock all four docks within a second, open an image, keep the event loop busy with napari's
    own activity spinner, and wait until every dock has warmed up."""
    from napari.utils import progress

    docks = []
    for i, name in enumerate(("Segment", "Deep supervision", "Fine-tune", "Correct")):
        later(250 * i, lambda name=name: (docks.append(dock(name)), step(f"docked {name}")))

    def open_image():
        step("opening an image")
        viewer.open_sample("napari-unet", "nuclei")
        report["spinner"] = True
        spin = progress(total=0, desc="spinner")  # napari's activity spinner (QMovie)
        later(3000, spin.close)

    later(1100, open_image)

    def ready():
        return len(docks) == 4 and all(getattr(d, "_torch_ready", True) for d in docks)

    def done():
        from napari_unet.widgets import _workers

        step("every dock warmed up")
        report["warm_ups"] = _workers.WARM_UPS_STARTED
        later(500, close)

    when(ready, done)


def close_during_warm_up():
    """Dock Segment, Fine-tune and Deep supervision and close at once (the warm-up is running)."""
    for name in ("Segment", "Fine-tune", "Deep supervision"):
        dock(name)
    later(300, close)


def _run_then_close(dock_name: str, model: str, size: int, n: int, seed: int):
    """Dock ``dock_name``, click its Run with ``model`` on a synthetic image, close 1.5 s later."""
    from napari_unet.synthetic import fluorescent_nuclei

    widget = dock(dock_name)
    viewer.add_image(fluorescent_nuclei((size, size), n, seed=seed)[0], name="nuclei")

    def run():
        widget.image.reset_choices()
        widget.model.value = model
        widget.run_button.native.click()
        step(f"{widget.run_button.text} clicked")
        later(1500, close)

    when(lambda: widget._torch_ready, run)


def segment_run():
    _run_then_close("Segment", "unet", 1536, 300, 1)


def finetune_run():
    widget = dock("Fine-tune")
    corrected_nuclei()

    def train():
        widget.model.value = "unet"
        widget.minutes.value = 5.0
        widget.only_if_better.value = False  # the first validation writes a checkpoint, better or not
        widget.train_button.native.click()
        step("Train clicked")
        # close once a validation has scored a model better than nothing: it must be kept
        when(lambda: bool(widget.plot.scores), close)

    when(lambda: widget._torch_ready, train)


def supervision_run():
    _run_then_close("Deep supervision", "unet++", 1024, 150, 2)


def correct_autosave():
    """Correct, add to a training set, edit, and close before the autosave's second has passed."""
    widget = dock("Correct")
    viewer.open_sample("napari-unet", "nuclei")
    widget.folder.value = str(OUT / "training-set")

    def correct():
        widget.source.reset_choices()
        widget.source.value = viewer.layers["nuclei (synthetic) ground truth"]
        widget.correct_button.native.click()
        widget.review_whole.native.click()
        widget.add_button.native.click()
        step("added to the training set")
        layer = viewer.layers.selection.active
        data = np.asarray(layer.data)
        data[:20, :20] = 999  # an edit: autosave is due a second later
        layer.data = data
        step(f"edited ({len(widget.autosave.dirty)} layer(s) to save)")
        later(100, close)

    later(500, correct)


def clear_layers_then_dock():
    """Correct a result, remove every layer, dock another widget (once segfaulted in vispy)."""
    seg = dock("Segment")
    viewer.open_sample("napari-unet", "nuclei")
    cor = dock("Correct")

    def run():
        seg.image.reset_choices()
        seg.run_button.native.click()
        when(lambda: not seg.running and seg.last_result is not None, correct)

    def correct():
        cor.source.reset_choices()
        cor.source.value = next(layer for layer in viewer.layers if layer.name.endswith("labels"))
        cor.correct_button.native.click()
        cor.review_whole.native.click()
        step("correcting")
        later(1000, clear)

    def clear():
        viewer.layers.clear()
        step("layers cleared")
        later(1000, lambda: (dock("Fine-tune"), step("docked Fine-tune"), later(3000, close)))

    when(lambda: seg._torch_ready, run)


SCENARIOS = {f.__name__: f for f in (warm_up_all_docks, close_during_warm_up, segment_run, finetune_run,
                                     supervision_run, correct_autosave, clear_layers_then_dock)}

if __name__ == "__main__":
    import os

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_UNET_MODEL_DIR"] = str(OUT / "models")  # never the user's own folder
    viewer = napari.Viewer(show=True)
    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    t0 = time.perf_counter()
    later(0, SCENARIOS[SCENARIO])
    napari.run()
    from napari_unet.widgets import _workers

    finished = _workers.shutdown()  # what atexit would do; here to report it
    gaps = np.diff(ticks) if len(ticks) > 1 else np.zeros(1)
    report["long_gaps"] = [(round(ticks[i] - t0, 2), round(float(g), 2)) for i, g in enumerate(gaps) if g > 0.3]
    report["files"] = sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file())
    report.update(longest_gap_s=float(gaps.max()), ticks=len(ticks), workers_finished=finished,
                  jobs_left=_workers.running(), seconds=time.perf_counter() - t0)
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)
