"""The Fine-tune widget in a real viewer: correct, train in the background, see the new model, run it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.catalog import user_models


def _corrections(viewer, click):
    """Sample nuclei, its true masks as the user's corrections (whole image reviewed), via the Correct widget."""
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    truth.metadata["napari_unet"] = {"kind": "labels", "source": image.name}
    _, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    correct.source.value = truth
    click(correct.correct_button)
    click(correct.review_whole)
    return image




def test_finetune_on_corrections_then_run_the_new_model(finetune_widget, click, qtbot):
    viewer, widget = finetune_widget
    image = _corrections(viewer, click)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model.value = "unet"
    widget.minutes.value = 0.3
    widget.name.value = "my nuclei"
    widget.only_if_better.value = False  # 18 s may not beat the base model: keep it anyway (tested below)
    assert widget.device_info.value.startswith("trains on: ")
    click(widget.train_button)
    assert widget.running and widget.train_button.text == "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    result = widget.last_result
    assert result is not None and result.path is not None, widget.status.value
    assert "my_nuclei" in user_models() and result.path.exists()
    assert "saved 'my_nuclei'" in widget.status.value and "validation AP@0.5" in widget.status.value
    assert widget.plot.losses and widget.plot.scores and widget.plot.baseline is not None
    assert result.baseline["ap50"] > 0.3  # the bundled model already sees these nuclei
    # the Segment widget's list has it at once; "Run new model" applies it to the image
    assert "my_nuclei" in [c for c in segment.model.choices]
    viewer.layers.selection.active = image
    click(widget.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=120_000)
    labels = viewer.layers[f"{image.name} [my_nuclei] labels"]
    assert labels.data.shape == image.data.shape and labels.data.max() > 5


def test_cancel_keeps_the_base_model_and_nothing_half_written(finetune_widget, click, qtbot):
    viewer, widget = finetune_widget
    _corrections(viewer, click)
    models_before = set(user_models())
    widget.model.value = "unet"
    widget.minutes.value = 10.0
    click(widget.train_button)
    qtbot.waitUntil(lambda: bool(widget.plot.losses), timeout=120_000)  # training steps are running
    click(widget.train_button)  # Cancel
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    result = widget.last_result
    assert result is not None and result.stopped == "stopped by user"
    # stopped before the first validation: nothing saved, no temporary file left behind
    assert result.path is None and set(user_models()) == models_before
    assert "nothing was saved" in widget.status.value


def test_bad_input_gives_a_message(finetune_widget, click):
    viewer, widget = finetune_widget
    click(widget.train_button)
    assert not widget.running and "No reviewed corrections" in widget.status.value
    widget.source.value = "training-set folder"
    widget.folder.value = str(viewer.window._qt_window.windowTitle()) + "-missing-folder"
    click(widget.train_button)
    assert not widget.running and "not a training set" in widget.status.value


def test_finetune_from_a_training_set_folder(finetune_widget, click, qtbot, tmp_path):
    """A training-set folder written by the Correct widget (here through its API) trains a model
    with nothing open in the viewer, and the model card names the folder."""
    from napari_unet.modelfile import read_config
    from napari_unet.synthetic import fluorescent_nuclei
    from napari_unet.trainingset import TrainingSet

    viewer, widget = finetune_widget
    folder = tmp_path / "my training set"
    ts = TrainingSet(folder)
    for seed in (1, 2):
        image, labels = fluorescent_nuclei((192, 192), 14, seed=seed)[:2]
        reviewed = np.zeros(labels.shape, np.uint8)
        reviewed[:, : 192 - 40 * seed] = 1  # half-reviewed images teach only what was checked
        ts.add(image, labels, reviewed, name=f"nuclei {seed}")
    widget.source.value = "training-set folder"
    widget.folder.value = str(folder)
    widget.model.value = "mobile-unet"
    widget.minutes.value = 0.15
    widget.name.value = "from folder"
    widget.only_if_better.value = False
    click(widget.train_button)
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    result = widget.last_result
    assert result is not None and result.path is not None, widget.status.value
    assert "from_folder" in user_models()
    card = read_config(result.path)
    assert str(folder) in str(card["provenance"])
    assert len(viewer.layers) == 0  # nothing was added to, or needed from, the viewer
    # an empty folder is refused with a message, and nothing is trained
    empty = tmp_path / "empty"
    TrainingSet(empty)
    widget.folder.value = str(empty)
    click(widget.train_button)
    assert not widget.running and "is empty: add corrections with the Correct widget" in widget.status.value


def test_a_training_set_folder_is_read_in_the_worker(finetune_widget, click, qtbot, tmp_path, monkeypatch):
    """Train on a folder reads its images in the run's worker, not on the Qt thread (0.04 s per
    1024² entry stalled napari), and says what it changed to fit the base model there too."""
    import threading

    from napari_unet.synthetic import fluorescent_nuclei
    from napari_unet.trainingset import TrainingSet

    viewer, widget = finetune_widget
    ts = TrainingSet(tmp_path / "set")
    image, labels = fluorescent_nuclei((128, 128), 8, seed=3)[:2]
    ts.add(np.stack([image] * 3, -1), labels, name="colour", channel_axis=2)  # RGB: made grey for the base
    threads, original = [], TrainingSet.load

    def load(self, name):
        threads.append(threading.current_thread())
        return original(self, name)

    monkeypatch.setattr(TrainingSet, "load", load)
    warnings = []
    monkeypatch.setattr("napari_unet.widgets.finetune.show_warning", warnings.append)
    widget.source.value = "training-set folder"
    widget.folder.value = str(ts.folder)
    widget.model.value = "mobile-unet"
    widget.minutes.value = 0.1
    click(widget.train_button)
    assert widget.running and "preparing 1 image(s)" in widget.status.value
    qtbot.waitUntil(lambda: bool(warnings), timeout=60_000)
    click(widget.train_button)  # Cancel: what was to be seen is seen
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert threads and threading.main_thread() not in threads
    assert any("images/colour" in w for w in warnings), warnings


def test_the_viewer_layers_images_are_read_in_the_worker(finetune_widget, click, qtbot, monkeypatch):
    """Train on the corrected layers reads their images' pixels in the run's worker (a lazy image
    is read from disk there), and says there what it changed to fit the base model."""
    import threading

    from napari_unet.widgets import finetune

    da = pytest.importorskip("dask.array")
    viewer, widget = finetune_widget
    image = _corrections(viewer, click)
    colour, name = np.stack([np.asarray(image.data, np.float32)] * 3, -1), image.name
    viewer.layers.remove(image)  # the corrections' image, now a lazy RGB one (made grey for the base)
    viewer.add_image(da.from_array(colour, chunks=(64, 64, 3)), name=name, rgb=True)
    threads, read = [], finetune.image_for_corrections

    def recorded(*args):
        threads.append(threading.current_thread())
        return read(*args)

    monkeypatch.setattr(finetune, "image_for_corrections", recorded)
    warnings = []
    monkeypatch.setattr(finetune, "show_warning", warnings.append)
    widget.model.value = "mobile-unet"
    widget.minutes.value = 0.1
    click(widget.train_button)
    assert widget.running and "preparing 1 image(s)" in widget.status.value
    qtbot.waitUntil(lambda: bool(warnings), timeout=60_000)
    click(widget.train_button)  # Cancel
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert threads and threading.main_thread() not in threads
    assert any(f"colour image '{name}' was converted to grey" in w for w in warnings), warnings


def test_a_run_refused_in_its_worker_keeps_the_last_runs_chart(finetune_widget, click, qtbot):
    """The corrections are checked against the base model in the worker: a refusal says why and
    leaves the previous run's chart as it was (the chart is cleared by the new run's first report)."""
    viewer, widget = finetune_widget
    image = _corrections(viewer, click)
    name, pixels = image.name, np.asarray(image.data)
    viewer.layers.remove(image)  # the corrections' image, now with two channels: a one-channel base refuses it
    viewer.add_image(np.stack([pixels, pixels]), name=name)
    widget.plot.add_loss(1, 0.5)  # the last run's chart
    widget.plot.add_loss(2, 0.4)
    widget.model.value = "mobile-unet"
    click(widget.train_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert "takes 1 channel(s)" in widget.status.value
    assert widget.plot.losses == [(1, 0.5), (2, 0.4)] and widget.last_result is None


def test_cancel_while_a_training_set_folder_is_read_stops_between_entries(finetune_widget, click, qtbot, tmp_path,
                                                                        monkeypatch):
    """Cancel during the worker's read of a folder is heard before the next entry: the run ends
    before the whole folder is read (here 0.5 s an entry, 5 s in all), and nothing is trained
    or saved."""
    import time

    from napari_unet.catalog import user_model_dir
    from napari_unet.synthetic import fluorescent_nuclei
    from napari_unet.trainingset import TrainingSet

    viewer, widget = finetune_widget
    ts = TrainingSet(tmp_path / "set")
    for seed in range(10):
        image, labels = fluorescent_nuclei((64, 64), 4, seed=seed)[:2]
        ts.add(image, labels, name=f"nuclei {seed}")
    loaded, original = [], TrainingSet.load

    def slow_load(self, name):
        loaded.append(name)
        time.sleep(0.5)
        return original(self, name)

    monkeypatch.setattr(TrainingSet, "load", slow_load)
    folder = user_model_dir()
    files_before = sorted(folder.rglob("*")) if folder.exists() else []
    widget.source.value = "training-set folder"
    widget.folder.value = str(ts.folder)
    widget.model.value = "mobile-unet"
    widget.minutes.value = 0.1
    widget.only_if_better.value = False  # (a model trained at all would be kept)
    click(widget.train_button)
    assert widget.running
    qtbot.waitUntil(lambda: len(loaded) >= 2, timeout=60_000)  # the read is under way
    started = time.perf_counter()
    click(widget.train_button)  # Cancel
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    seconds = time.perf_counter() - started
    assert len(loaded) < 10, (seconds, loaded)  # stopped before the end of the read (no time gates the test)
    result = widget.last_result
    assert result is not None and result.path is None and result.stopped == "stopped by user"
    assert "nothing was saved" in widget.status.value and widget.train_button.text == "Train"
    assert not widget.plot.losses and not widget.run_button.enabled
    assert (sorted(folder.rglob("*")) if folder.exists() else []) == files_before  # no model, no run state


def test_the_warm_up_loads_what_a_run_imports(tmp_path):
    """Imports hold Python's GIL: a module first imported by a run stalls the viewer while the user
    paints. The dock's warm-up (when it opens) must load them all, PyTorch's optimizer stack included."""
    import json
    import subprocess
    import sys

    code = f"""
import json, sys
import numpy as np
from napari_unet.widgets._workers import warm_up_imports
from napari_unet.finetune import FinetuneSettings, finetune_iter
from napari_unet.inference.predictor import run_to_end
from napari_unet.synthetic import fluorescent_nuclei
warm_up_imports()
pairs = [fluorescent_nuclei((96, 96), 12, seed=seed)[:2] for seed in (0, 1)]  # one trains, one validates
before = set(sys.modules)
settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1)
run_to_end(finetune_iter("unet", [(im, lab, np.ones(lab.shape, bool)) for im, lab in pairs], settings,
                         out_dir={str(tmp_path)!r}))
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    late = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in late if m.startswith(("sympy", "torch._dynamo", "scipy", "skimage"))], late
    assert len(late) < 20, late


def test_a_model_no_better_than_its_base_is_not_saved_and_the_status_says_so(finetune_widget, click, qtbot,
                                                                            monkeypatch, tiny_in_list):
    from napari_unet.training import basescore
    from napari_unet.training import validation

    real_validate, real_score_base, calls = validation.validate, basescore.score_base, []

    def validate(*args, **kwargs):  # every fine-tuned state scores 0.7
        calls.append(1)
        return {**real_validate(*args, **kwargs), "ap50": 0.7}

    def score_base(*args, **kwargs):  # the base scores 0.8, with its own post-processing and tuned
        score = real_score_base(*args, **kwargs)
        return replace(score, metrics={**score.metrics, "ap50": 0.8}, bar=0.8 if kwargs["tune"] else None)

    monkeypatch.setattr(validation, "validate", validate)
    monkeypatch.setattr(basescore, "score_base", score_base)
    monkeypatch.setattr(basescore, "base_postprocess", lambda *args: (None, 0.8, 0.8))  # and its own settings win
    monkeypatch.setattr(validation, "tune_postprocess", lambda *a, **k: ({"threshold": 0.5, "min_size": 16,
                                                                       "split_touching": True}, [(None, 0.7)]))
    viewer, widget = finetune_widget
    _corrections(viewer, click)
    widget.refresh_models()
    models_before = set(user_models())
    widget.model.value = tiny_in_list  # a base that declares no object size (one that estimates sizes would still be
    widget.minutes.value = 0.2  # saved, made for the corrections' size: test_finetune_keep.py)
    assert widget.only_if_better.value  # the default
    shown, on_progress = [], widget._on_progress  # every status line the run's events show

    def record(event):
        on_progress(event)
        shown.append(widget.status.value)
        shown.append(widget._progress.desc)  # napari's activity dock

    widget._on_progress = record  # (monkeypatch's undo would remove it as a magicgui widget)
    click(widget.train_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    result = widget.last_result
    assert result.path is None and result.steps > 0 and calls  # validated (3+ times: test_finetune_keep.py)
    # after training, the seconds the base model's post-processing takes are said, not a frozen "0.0 min left"
    assert (f"step {result.steps}: the fine-tuned weights did not beat the base model: choosing its post-processing "
            "on the reviewed regions…") in shown
    assert any(line.startswith("napari-unet: choosing its post-processing on the reviewed regions") for line in shown)
    assert set(user_models()) == models_before and not widget.run_button.enabled
    status = widget.status.value
    assert "is not above" in status and "the base model's 0.800 plus one held-out object" in status
    assert "untick 'Keep only if better'" in status
    assert "nan" not in status


def test_masks_opened_from_a_file_are_fine_tuned_with_their_image(finetune_widget, click, qtbot):
    """Corrections of a Labels layer the user opened (no image recorded): the only image of their
    shape is used; with two such images the user picks one in 'Image'."""
    viewer, widget = finetune_widget
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    truth.metadata.pop("napari_unet", None)  # as if opened from a mask file
    _, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    correct.source.value = truth
    click(correct.correct_button)
    click(correct.review_whole)
    triples, source = widget.viewer_triples()
    assert len(triples) == 1 and np.array_equal(triples[0][0], image.data) and truth.name in source
    twin = viewer.add_image(image.data[::-1].copy(), name="another image")
    with pytest.raises(ValueError, match="2 images have its shape.*choose its image in 'Image'"):
        widget.viewer_triples()
    widget.image.reset_choices()
    widget.image.value = twin
    triples, _ = widget.viewer_triples()
    assert np.array_equal(triples[0][0], twin.data)


def test_a_run_interrupted_by_closing_its_dock_resumes_next_time(make_napari_viewer, click, qtbot):
    """Fine-tuning keeps its state after every epoch: closing the dock (as closing napari does) keeps
    it, and Train with the same corrections, base, settings and name goes on from there; a run that
    ends with its dock open (done or cancelled) leaves nothing to resume."""
    from napari_unet.finetune import resumable, run_key
    from napari_unet.widgets import _workers

    def open_dock():
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
        qtbot.waitUntil(lambda: widget._torch_ready, timeout=60_000)
        _corrections(viewer, click)
        widget.model.value = "unet"
        widget.minutes.value = 3.0  # long enough for a checkpoint (every 20 steps) on a loaded machine
        widget.name.value = "resumed nuclei"
        widget.only_if_better.value = False
        return viewer, widget

    viewer, widget = open_dock()
    triples, _ = widget.viewer_triples()
    from napari_unet.training.corrections import fit_corrections

    triples, _ = fit_corrections(triples, *widget._base_model_inputs())  # as the run's worker fits them
    state = resumable(run_key("unet", triples, widget.settings(), "resumed nuclei"))
    assert not state.exists
    click(widget.train_button)
    qtbot.waitUntil(lambda: state.checkpoint.is_file(), timeout=180_000)  # an epoch done
    widget.lifetime.close()  # what closing the dock or napari does to its jobs
    qtbot.waitUntil(lambda: _workers.running() == 0, timeout=60_000)
    state = resumable(state.checkpoint.stem)
    assert state.exists and state.path.name == "resumed_nuclei.safetensors"

    _, again = open_dock()
    click(again.train_button)
    qtbot.waitUntil(lambda: bool(again.plot.losses), timeout=180_000)  # training again, from the saved step
    click(again.train_button)  # Cancel: the best model so far (the first part's validated one) is kept
    qtbot.waitUntil(lambda: not again.running, timeout=120_000)
    result = again.last_result
    assert result is not None and result.resumed and result.path == state.path and result.path.exists()
    assert "resumed an interrupted run" in again.status.value
    assert result.steps > 20 and result.stopped == "stopped by user"
    assert not resumable(state.checkpoint.stem).exists  # ended with the dock open: nothing left to resume
