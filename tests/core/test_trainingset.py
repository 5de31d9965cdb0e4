"""The training-set folder: add, autosave, reload, and nothing lost on bad input or a failed write."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.trainingset import TrainingSet


def test_add_update_reload(tmp_path):
    image, labels = fluorescent_nuclei((64, 80), 6, seed=1)
    ts = TrainingSet(tmp_path / "set")
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:32] = True
    e1 = ts.add(image, labels, reviewed, name="nuclei [unet] corrected", source="layer nuclei")
    e2 = ts.add(image, labels, name="nuclei [unet] corrected")
    assert e1.name == "nuclei_unet_corrected" and e2.name == "nuclei_unet_corrected-2"
    assert e1.reviewed_fraction == 0.5 and e2.reviewed_fraction == 1.0 and e1.objects == len(np.unique(labels)) - 1
    edited = labels.copy()
    edited[edited == edited.max()] = 0
    ts.update(e1.name, labels=edited)
    again = TrainingSet(tmp_path / "set", create=False)
    assert again.names() == [e1.name, e2.name]
    im, lab, rev = again.load(e1.name)
    np.testing.assert_array_equal(im, image)
    np.testing.assert_array_equal(lab, edited)
    np.testing.assert_array_equal(rev, reviewed)
    triples = again.triples()
    assert len(triples) == 2 and triples[1][2].all()
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    assert index["format"] == "napari-unet-training-set" and len(index["entries"]) == 2


def test_names_differing_in_case_and_removed_entries_never_share_files(tmp_path):
    """macOS and Windows file systems do not tell 'Cells' from 'cells': the second gets its own
    name. Removing an entry twice under the same name keeps both removals' files."""
    image, labels = fluorescent_nuclei((32, 40), 3, seed=4)
    ts = TrainingSet(tmp_path / "set")
    assert ts.add(image, labels, name="Cells corrected").name == "Cells_corrected"
    assert ts.add(image, labels + (labels > 0), name="cells corrected").name == "cells_corrected-2"
    for value in (1, 2):
        ts.add(image, np.full(labels.shape, value, np.int32), name="again")
        ts.remove("again")
    kept = sorted(p.name for p in (tmp_path / "set" / "masks").iterdir() if p.name.startswith("again"))
    assert kept == ["again.tif.removed", "again.tif.removed-2"]
    import tifffile

    assert {int(tifffile.imread(tmp_path / "set" / "masks" / name).max()) for name in kept} == {1, 2}


def test_a_folder_of_the_users_images_and_masks_is_not_taken_for_an_empty_one(tmp_path):
    import tifffile

    image, labels = fluorescent_nuclei((32, 32), 3, seed=5)
    for kind, array in (("images", image), ("masks", labels)):
        (tmp_path / "data" / kind).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "data" / kind / "cells.tif", array)
    with pytest.raises(ValueError, match="holds other files"):
        TrainingSet(tmp_path / "data")
    (tmp_path / "fresh" / "images").mkdir(parents=True)  # empty folders are fine
    assert len(TrainingSet(tmp_path / "fresh")) == 0


def test_channel_axis_and_bad_input(tmp_path):
    image, labels = fluorescent_nuclei((32, 32), 3, seed=2)
    rgb = np.stack([image] * 3, axis=-1)
    ts = TrainingSet(tmp_path / "set")
    entry = ts.add(rgb, labels, channel_axis=2)
    assert ts.triples()[0][0].shape == (3, 32, 32) and entry.shape == [32, 32]
    with pytest.raises(ValueError, match="do not match the image"):
        ts.add(image, labels[:16])
    with pytest.raises(ValueError, match="fractional"):
        ts.add(image, labels + 0.5)
    with pytest.raises(ValueError, match="negative"):
        ts.add(image, labels.astype(np.int32) - 1)
    with pytest.raises(ValueError, match="reviewed region"):
        ts.add(image, labels, reviewed=np.ones((3, 3)))
    with pytest.raises(KeyError, match="No entry"):
        ts.update("missing", labels=labels)
    assert len(TrainingSet(tmp_path / "set")) == 1  # none of the refused adds reached the index
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        TrainingSet(tmp_path / "mine")
    with pytest.raises(ValueError, match="not a training set"):
        TrainingSet(tmp_path / "nothing", create=False)


def test_a_failed_write_keeps_the_previous_masks(tmp_path, monkeypatch):
    image, labels = fluorescent_nuclei((32, 32), 3, seed=3)
    ts = TrainingSet(tmp_path / "set")
    entry = ts.add(image, labels)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(ValueError, match="No space left.*previous version is kept"):
        ts.update(entry.name, labels=np.zeros_like(labels))
    monkeypatch.undo()
    _, lab, _ = TrainingSet(tmp_path / "set").load(entry.name)
    np.testing.assert_array_equal(lab, labels)
    assert not [p for p in (tmp_path / "set" / "masks").iterdir() if p.name.endswith(".tmp")]


def test_an_update_that_fails_half_way_keeps_the_previous_pair(tmp_path, monkeypatch):
    import napari_unet.trainingset as module

    ts = TrainingSet(tmp_path / "set")
    ts.add(np.zeros((16, 16), np.float32), np.ones((16, 16), np.uint16), np.ones((16, 16), bool), name="e")
    ts.update("e", labels=np.full((16, 16), 2, np.uint16))  # a first autosave: revision files
    real = module.write_tif

    def full_disk(path, data):
        if "reviewed" in str(path):
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(module, "write_tif", full_disk)
    with pytest.raises(ValueError, match="No space left"):
        ts.update("e", labels=np.full((16, 16), 3, np.uint16), reviewed=np.zeros((16, 16), bool))
    monkeypatch.undo()
    for opened in (ts, TrainingSet(tmp_path / "set", create=False)):
        _, labels, reviewed = opened.load("e")
        assert (labels == 2).all() and reviewed.all()  # the previous pair, whole
    assert sorted(p.name for p in (tmp_path / "set" / "masks").iterdir()) == ["e@1.tif"]


def _add_many(folder, worker, n):
    from napari_unet.trainingset import TrainingSet

    ts = TrainingSet(folder, create=False)
    for i in range(n):
        ts.add(np.zeros((8, 8), np.float32), np.ones((8, 8), np.uint16), name=f"w{worker}-{i}")


def test_two_processes_adding_to_one_folder_lose_no_entry(tmp_path):
    """The folder lock holds across processes (a second napari, or the CLI, on the same set)."""
    import multiprocessing

    TrainingSet(tmp_path / "set")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_many, args=(tmp_path / "set", w, 20)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    assert sorted(TrainingSet(tmp_path / "set", create=False).names()) == sorted(
        f"w{w}-{i}" for w in range(2) for i in range(20))


def test_without_file_locks_an_update_in_flight_elsewhere_is_not_removed(tmp_path, monkeypatch):
    """On a share without locks, opening the folder must not delete a revision another process
    has just written and is about to put in the index; an hour-old one is an abandoned update."""
    import time

    from napari_unet import trainingset

    image, labels = fluorescent_nuclei((32, 32), 3, seed=6)
    TrainingSet(tmp_path / "set").add(image, labels, name="cells")
    in_flight, abandoned = (tmp_path / "set" / "masks" / f"cells@{n}.tif" for n in (7, 3))
    in_flight.write_bytes(b"new revision")
    abandoned.write_bytes(b"old revision")
    old = time.time() - 2 * 3600
    os.utime(abandoned, (old, old))
    monkeypatch.setattr(trainingset, "_lock_file", lambda path: None)  # a file system with no locks
    monkeypatch.setattr(trainingset, "_locks", {})
    TrainingSet(tmp_path / "set", create=False)
    assert in_flight.exists() and not abandoned.exists()
