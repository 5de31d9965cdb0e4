"""Faults in a real viewer: Cancel at random moments, a save that fails, closing mid-save.

The promise checked each time: the layer list (names and data), the model files and the
training-set folder are what they were, Cancel answers within about a second, and the next run
works.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from napari_unet.catalog import user_model_dir, user_models
from napari_unet.trainingset import TrainingSet

SEED = 20240607


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def layer_snapshot(viewer) -> list[tuple[str, np.ndarray]]:
    return [(layer.name, np.array(layer.data, copy=True)) for layer in viewer.layers]


def assert_layers_unchanged(viewer, snapshot):
    assert [layer.name for layer in viewer.layers] == [name for name, _ in snapshot]
    for layer, (name, data) in zip(viewer.layers, snapshot):
        np.testing.assert_array_equal(np.asarray(layer.data), data, err_msg=f"layer {name!r} changed")


@pytest.fixture
def tiny_installed(make_random_model):
    """The tiny random model (features 8, 16, 32) installed as the user model 'tiny'."""
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.safetensors"
    shutil.copy(make_random_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def nuclei_crop(nuclei_sample):
    image, labels = nuclei_sample[:2]
    return np.asarray(image)[:256, :256], np.asarray(labels)[:256, :256]


# -- Segment -------------------------------------------------------------------------------

def test_segment_cancel_at_random_moments_changes_no_layer(tiny_installed, segment_widget, qtbot, click,
                                                           run_and_wait, nuclei_crop):
    viewer, widget = segment_widget
    widget.model.value = "tiny"
    small = viewer.add_image(nuclei_crop[0], name="cells")
    run_and_wait(widget)  # the user's earlier result, which they then edit by hand
    earlier = viewer.layers["cells [tiny] labels"]
    earlier.data[:10, :10] = 7
    big = viewer.add_image(np.random.default_rng(1).random((2048, 2048)).astype(np.float32), name="big")
    widget.tile_size.value = "256"
    before = layer_snapshot(viewer)
    model_bytes = tiny_installed.read_bytes()
    latencies = []
    for delay in np.random.default_rng(SEED).uniform(0.0, 0.5, 5):
        widget.image.value = big
        click(widget.run_button)
        assert widget.run_button.text == "Cancel"
        qtbot.wait(int(delay * 1000))
        assert widget.running, "the run ended before Cancel: use a larger image"
        started = time.perf_counter()
        click(widget.run_button)  # Cancel
        qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
        latencies.append(time.perf_counter() - started)
        assert widget.run_button.text == "Run" and "cancelled" in widget.status.value
        assert_layers_unchanged(viewer, before)
    print("Segment cancel latencies (s):", [round(x, 3) for x in latencies])
    assert max(latencies) < 1.5, latencies
    assert tiny_installed.read_bytes() == model_bytes
    # the next run works, and as the earlier result was edited it gets a layer of its own
    widget.image.value = small
    widget.tile_size.value = "auto"
    run_and_wait(widget)
    assert [layer.name for layer in viewer.layers] == [name for name, _ in before] + ["cells [tiny] labels (2)"]
    assert_layers_unchanged(viewer, before + [("cells [tiny] labels (2)",
                                               np.asarray(viewer.layers["cells [tiny] labels (2)"].data))])
    new = viewer.layers["cells [tiny] labels (2)"]
    assert new.data.shape == small.data.shape and "objects in" in widget.status.value


# -- Fine-tune -----------------------------------------------------------------------------



def test_finetune_cancel_within_a_second_keeps_models_and_training_set(tiny_installed, finetune_widget, click,
                                                                      qtbot, tmp_path, nuclei_crop):
    # (tiny installed before the dock opens: its list of models is only read again after a save)
    viewer, widget = finetune_widget
    ts = TrainingSet(tmp_path / "set")
    ts.add(*nuclei_crop, name="nuclei")
    set_before = folder_digest(ts.folder)
    widget.source.value = "training-set folder"
    widget.folder.value = str(ts.folder)
    widget.model.value = "mobile-unet"
    widget.minutes.value = 10.0
    widget.only_if_better.value = False  # a model checkpointed after a step or two is kept: the cancel keeps it
    previous = tiny_installed.read_bytes()
    latencies, saved = [], []
    for delay in np.random.default_rng(SEED + 1).uniform(0.1, 1.5, 3):
        models_before = set(user_models())
        click(widget.train_button)
        assert widget.running and widget.train_button.text == "Cancel"
        qtbot.wait(int(delay * 1000))
        started = time.perf_counter()
        click(widget.train_button)  # Cancel
        qtbot.waitUntil(lambda: widget.train_button.text == "Train", timeout=10_000)
        latencies.append(time.perf_counter() - started)
        result = widget.last_result
        assert not widget.running and result is not None and result.stopped == "stopped by user"
        if result.path is None:  # stopped before the first validation
            assert set(user_models()) == models_before and "nothing was saved" in widget.status.value
        else:
            from napari_unet.modelfile import load_model

            assert set(user_models()) == models_before | {result.name}
            assert load_model(result.path).config["provenance"]["stopped"] == "stopped by user"
            saved.append(result.name)
        assert folder_digest(ts.folder) == set_before
        assert tiny_installed.read_bytes() == previous
        assert list(user_model_dir().glob(".*.tmp")) == []
        assert {"tiny", "mobile-unet"} <= set(widget.model.choices) and widget.model.value == "mobile-unet"
    print("Fine-tune cancel latencies (s):", [round(x, 3) for x in latencies])
    assert max(latencies) < 1.5, latencies
    # a next Train runs to its end and saves a model that loads
    widget.minutes.value = 0.1
    widget.name.value = "after cancels"
    click(widget.train_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    result = widget.last_result
    assert result.stopped == "time budget" and result.path is not None and result.name == "after_cancels"
    from napari_unet.modelfile import load_model

    assert load_model(result.path).config["provenance"]["base_model"] == "mobile-unet"
    assert folder_digest(ts.folder) == set_before


# -- Correct: autosave that fails, and closing during a save ------------------------------------------

@pytest.fixture
def correcting(make_napari_viewer, click, qtbot, tmp_path, nuclei_crop):
    """A corrected layer linked to a training-set entry (autosave on)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    image = viewer.add_image(nuclei_crop[0], name="cells")
    pred = viewer.add_labels(nuclei_crop[1].astype(np.int32), name="cells [unet] labels",
                             metadata={"napari_unet": {"kind": "labels", "source": image.name}})
    widget.source.value = pred
    widget.folder.value = str(tmp_path / "set")
    click(widget.correct_button)
    click(widget.review_whole)
    click(widget.add_button)
    qtbot.waitUntil(lambda: not widget.job_running, timeout=60_000)
    corrected = viewer.layers["cells [unet] labels corrected"]
    widget.tool.value = "delete object (click)"
    return viewer, widget, corrected, tmp_path / "set"


def _delete_an_object(widget, corrected) -> int:
    ids = np.unique(np.asarray(corrected.data))
    target = int(ids[ids > 0][0])
    widget.click(corrected, np.argwhere(np.asarray(corrected.data) == target)[0].astype(float))
    assert target not in np.asarray(corrected.data)
    return target


def test_autosave_failing_mid_write_or_closing_mid_save_keeps_the_training_set(correcting, qtbot, monkeypatch):
    """A save that fails half-way (disk full) leaves the folder as it was and is retried with the
    next edit; closing the window while a save runs still saves the last edit, in order."""
    import tifffile

    viewer, widget, corrected, folder = correcting
    entry = TrainingSet(folder, create=False).names()[0]
    saved_labels = TrainingSet(folder, create=False).load(entry)[1]
    digest = folder_digest(folder)
    real_imwrite = tifffile.imwrite

    def disk_full(path, data, **kwargs):
        with open(path, "wb") as f:
            f.write(b"II*\x00" + bytes(1000))  # a partial TIFF, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    first = _delete_an_object(widget, corrected)
    widget.flush()
    qtbot.waitUntil(lambda: "Autosave failed" in widget.status.value, timeout=10_000)
    qtbot.waitUntil(lambda: widget.autosave.saving is None, timeout=10_000)
    assert "No space left" in widget.status.value and "previous files are intact" in widget.status.value
    assert folder_digest(folder) == digest  # nothing half-written, no temporary file left
    np.testing.assert_array_equal(TrainingSet(folder, create=False).load(entry)[1], saved_labels)
    # the disk has room again: the next edit saves both edits
    monkeypatch.setattr(tifffile, "imwrite", real_imwrite)
    second = _delete_an_object(widget, corrected)
    widget.flush()
    qtbot.waitUntil(lambda: widget.status.value.startswith("saved"), timeout=10_000)
    labels = TrainingSet(folder, create=False).load(entry)[1]
    assert first not in labels and second not in labels
    np.testing.assert_array_equal(labels, corrected.data)

    # slow writes: close the window while a save runs and another edit waits for the autosave timer
    def slow_imwrite(path, data, **kwargs):
        time.sleep(0.3)
        return real_imwrite(path, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", slow_imwrite)
    qtbot.waitUntil(lambda: widget.autosave.saving is None, timeout=10_000)
    third = _delete_an_object(widget, corrected)
    widget.flush()  # a save of the third edit starts in a worker ...
    qtbot.waitUntil(lambda: widget.autosave.saving is not None, timeout=5_000)
    fourth = _delete_an_object(widget, corrected)  # ... an edit lands while it runs ...
    expected = np.array(corrected.data, copy=True)
    assert widget.autosave.timer.isActive()
    viewer.window._qt_window.close()  # ... and the user closes napari before the next autosave
    labels = TrainingSet(folder, create=False).load(entry)[1]
    assert third not in labels and fourth not in labels
    np.testing.assert_array_equal(labels, expected)
    assert list(folder.rglob(".*.tmp")) == []
