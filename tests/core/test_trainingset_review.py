"""A training set made by two processes at once keeps both entries; entries with channels that
are not colour open as layers that line up with their labels."""

from __future__ import annotations

import numpy as np

from napari_unet._reader import training_set_layer_data
from napari_unet.trainingset import TrainingSet


def test_a_training_set_another_process_made_meanwhile_is_read_not_overwritten(tmp_path, monkeypatch):
    """Between this process's "no index.json yet" and its lock, another one creates the training
    set and adds an entry: this one must read that index, not write an empty one over it."""
    from napari_unet import trainingset

    folder = tmp_path / "set"
    real = trainingset._folder_lock

    class Raced:
        """The folder's lock, which the other process takes first (once)."""

        def __init__(self, key):
            self.inner, self.raced = real(key), False

        @property
        def held(self):
            return self.inner.held

        def __enter__(self):
            if not self.raced:
                self.raced = True
                monkeypatch.setattr(trainingset, "_folder_lock", real)
                other = TrainingSet(folder)  # the other process
                other.add(np.zeros((8, 8), np.float32), np.ones((8, 8), np.uint16), name="theirs")
            return self.inner.__enter__()

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(trainingset, "_folder_lock", Raced)
    mine = TrainingSet(folder)
    assert mine.names() == ["theirs"]
    mine.add(np.zeros((8, 8), np.float32), np.ones((8, 8), np.uint16), name="mine")
    assert sorted(TrainingSet(folder, create=False).names()) == ["mine", "theirs"]


def test_channels_last_that_are_not_colour_open_in_front_of_the_labels(tmp_path):
    ts = TrainingSet(tmp_path / "set")
    labels = np.zeros((24, 32), np.uint16)
    labels[4:10, 4:10] = 1
    two = np.random.default_rng(0).random((24, 32, 2)).astype(np.float32)  # two channels, last
    ts.add(two, labels, name="two", channel_axis=2)
    rgb = np.zeros((24, 32, 3), np.uint8)
    ts.add(rgb, labels, name="colour", channel_axis=2)
    first = np.zeros((2, 24, 32), np.float32)
    ts.add(first, labels, name="first", channel_axis=0)
    layers = {kwargs["name"]: (data, kwargs) for data, kwargs, _ in training_set_layer_data(ts.folder)}
    image, kwargs = layers["two image"]
    assert image.shape == (2, 24, 32) and not kwargs["rgb"]  # channels as planes over the labels' (24, 32)
    np.testing.assert_array_equal(image, np.moveaxis(two, -1, 0))
    assert layers["colour image"][0].shape == (24, 32, 3) and layers["colour image"][1]["rgb"]
    assert layers["first image"][0].shape == (2, 24, 32) and not layers["first image"][1]["rgb"]
    assert layers["two"][0].shape == (24, 32)
