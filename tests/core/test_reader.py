"""The training-set reader: which paths it claims, and the linked layers it makes."""

from __future__ import annotations

import json

import numpy as np

from napari_unet._reader import KEY, get_reader, read_training_set, training_set_layer_data
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.trainingset import TrainingSet


def _set(tmp_path):
    image, labels = fluorescent_nuclei((48, 64), 5, seed=3)
    ts = TrainingSet(tmp_path / "set")
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:24] = True
    ts.add(image, labels, reviewed, name="first")
    rgb = np.stack([image] * 3, axis=-1)
    ts.add(rgb, labels, name="colour", channel_axis=2)
    return ts, image, labels, reviewed


def test_reader_claims_training_sets_only(tmp_path):
    ts, *_ = _set(tmp_path)
    assert get_reader(str(ts.folder / "index.json")) is read_training_set
    assert get_reader(str(ts.folder)) is read_training_set
    assert get_reader([str(ts.folder / "index.json")]) is read_training_set
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.json").write_text(json.dumps({"format": "something else"}))
    assert get_reader(str(other / "index.json")) is None
    assert get_reader(str(other)) is None
    (other / "broken").mkdir()
    (other / "broken" / "index.json").write_text("{not json")
    assert get_reader(str(other / "broken" / "index.json")) is None
    assert get_reader(str(tmp_path / "missing" / "index.json")) is None
    assert get_reader([str(ts.folder), str(other)]) is None  # a stack of folders is not ours


def test_layers_are_linked_as_the_correct_dock_links_them(tmp_path):
    ts, image, labels, reviewed = _set(tmp_path)
    layers = read_training_set(str(ts.folder / "index.json"))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("first image", "image"), ("first", "labels"), ("first reviewed", "labels"),
        ("colour image", "image"), ("colour", "labels"), ("colour reviewed", "labels")]
    (im, im_kw, _), (lab, lab_kw, _), (rev, rev_kw, _) = layers[:3]
    np.testing.assert_array_equal(im, image)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_array_equal(rev, reviewed.astype(np.uint8))
    assert not im_kw["rgb"] and layers[3][1]["rgb"]
    meta = lab_kw["metadata"][KEY]
    assert meta == {"kind": "corrections", "source": "first image", "training_set": str(ts.folder),
                    "entry": "first", "from": "", "reviewed": "first reviewed"}
    assert rev_kw["metadata"][KEY] == {"kind": "reviewed", "corrections": "first"}


def test_empty_training_set_says_so(tmp_path):
    TrainingSet(tmp_path / "empty")
    try:
        training_set_layer_data(tmp_path / "empty")
    except ValueError as exc:
        assert "is empty" in str(exc)
    else:
        raise AssertionError("an empty training set opened without a word")
