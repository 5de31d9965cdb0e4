"""Corrections made fit for a base model (the Fine-tune dock's checks), and the weight map as the
loss sees a stack: known arrays, no Qt."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.training.corrections import fit_corrections
from napari_unet.inputs import colour_last, colour_to_grey
from napari_unet.training.patches import loss_weight_map, loss_weight_map_planes


def _triple(image_shape=(32, 40), labels_shape=(32, 40), dtype=np.float32):
    labels = np.zeros(labels_shape, np.int32)
    labels[..., 4:12, 4:12] = 1
    return np.ones(image_shape, dtype), labels, np.ones(labels_shape, bool)


def test_grey_images_pass_and_colour_becomes_grey_for_a_one_channel_model():
    [(image, labels, reviewed)], notes = fit_corrections([_triple()], 1, 2)
    assert notes == [] and image.shape == (32, 40) and labels.dtype == np.uint16 and reviewed.all()
    rgb = np.stack([np.full((32, 40), v, np.float32) for v in (1, 2, 6)], axis=-1)
    [(image, _, _)], notes = fit_corrections([(rgb, _triple()[1], None)], 1, 2, names=[("c", "photo")])
    assert image.shape == (32, 40) and image.dtype == np.float32 and np.allclose(image, 3.0)
    assert notes == ["The colour image 'photo' was converted to grey for this one-channel model."]
    [(image, _, _)], _ = fit_corrections([(rgb, _triple()[1], None)], 3, 2)
    assert image.shape == (3, 32, 40)  # colour last is taken channels first


@pytest.mark.parametrize("triple,in_channels,spatial_dims,message", [
    (_triple(labels_shape=(32, 41)), 1, 2, r"corrections 'mask' \(32, 41\) do not fit the image 'img' \(32, 40\)"),
    ((np.ones((32, 40)), -np.ones((32, 40), np.int32), None), 1, 2, r"'mask': The labels hold negative ids"),
    ((np.ones((2, 32, 40)), np.zeros((32, 40), np.int32), None), 1, 2,
     r"takes 1 channel\(s\) but the image 'img' has 2"),
    (_triple(), 2, 2, r"takes 2 channel\(s\) but the image 'img' has 1"),
    (_triple(), 1, 3, r"base model is 3D .* 'mask' is a 2D image"),
    (_triple((2, 2, 4, 4), (2, 2, 4, 4)), 1, 2, r"'mask' has 4 dimensions"),
    ((np.ones((32, 40), complex), np.zeros((32, 40), np.int32), None), 1, 2, r"image 'img' has data type complex"),
])
def test_what_does_not_fit_is_refused_naming_the_layers(triple, in_channels, spatial_dims, message):
    with pytest.raises(ValueError, match=message):
        fit_corrections([triple], in_channels, spatial_dims, names=[("mask", "img")])


def test_without_names_the_messages_number_the_triples():
    with pytest.raises(ValueError, match="'corrections 1'"):
        fit_corrections([_triple(), _triple(labels_shape=(3, 3, 3, 3))], 1, 2, names=[("only one", "name")])


def test_colour_rules():
    assert colour_last((32, 40, 3), (32, 40)) and colour_last((5, 32, 40, 4), (5, 32, 40))
    assert not colour_last((3, 32, 40), (32, 40)) and not colour_last((3, 3, 3), (3, 3))  # channels first already
    grey = colour_to_grey(np.stack([np.full((2, 2), v) for v in (0, 3, 6, 100)]))  # alpha is left out
    assert grey.shape == (1, 2, 2) and grey.dtype == np.float32 and np.allclose(grey, 3)


def test_weight_map_of_a_stack_is_plane_by_plane_in_pixels_and_whole_with_spacing():
    labels = np.zeros((2, 24, 24), np.int32)
    labels[0, 4:11, 4:11], labels[0, 4:11, 12:19] = 1, 2  # touching objects in the first plane only
    labels[1, 6:14, 6:14] = 3
    params = {"w0": 10.0, "sigma": 3.0, "class_weights": None}
    planes = loss_weight_map_planes(labels, **params)
    assert planes.shape == labels.shape
    for z in range(2):
        np.testing.assert_allclose(planes[z], loss_weight_map(labels[z], **params))
    np.testing.assert_allclose(loss_weight_map_planes(labels[0], **params), loss_weight_map(labels[0], **params))
    whole = loss_weight_map_planes(labels, spacing=(1.0, 0.5, 0.5), **params)
    np.testing.assert_allclose(whole, loss_weight_map(labels, spacing=(1.0, 0.5, 0.5), **params))
