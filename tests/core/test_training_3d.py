"""Training on 3D volumes: targets, weight maps, patches, the reviewed mask, the trainer's checks,
3D metrics and a real run (no Qt; CPU, tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unet.inference.postprocess import probabilities_to_labels
from napari_unet.inference.predictor import run_to_end
from napari_unet.metrics import evaluate
from napari_unet.modelfile import DEFAULT_NORMALIZATION
from napari_unet.models import build_model
from napari_unet.synthetic import nuclei_3d
from napari_unet.training import IGNORE, PatchSampler, binary_target, prepare_image, train_iter
from napari_unet.training.patches import as_channels_first, boundary_target, touching_boundaries
from napari_unet.training.trainer import DEFAULT_PATCH, patch_shape

N = DEFAULT_NORMALIZATION


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


@pytest.fixture(scope="module")
def volumes():
    return [nuclei_3d((16, 48, 48), 8, seed=s) for s in range(3)]


def two_blocks(axis: int) -> np.ndarray:
    """Two 6x6x6 blocks touching along ``axis`` (ids 1 and 2) in a (14, 16, 18) volume."""
    labels = np.zeros((14, 16, 18), np.int32)
    first = [slice(2, 8)] * 3
    second = list(first)
    second[axis] = slice(8, 14)
    labels[tuple(first)] = 1
    labels[tuple(second)] = 2
    return labels


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_3d_binary_target_cuts_a_two_voxel_gap_between_touching_objects(axis):
    labels = two_blocks(axis)
    gap = touching_boundaries(labels)
    target = binary_target(labels)
    contact = [slice(3, 7)] * 3  # inside the contact face, away from its rim
    for plane in (7, 8):  # the last plane of object 1 and the first of object 2
        contact[axis] = slice(plane, plane + 1)
        assert gap[tuple(contact)].all() and (target[tuple(contact)] == 0).all()
    assert gap.sum() == 2 * 36  # both 6x6 faces, 6-connected contacts only
    assert (target[labels == 0] == 0).all() and target.sum() == (labels > 0).sum() - 72
    bt = boundary_target(labels)
    assert set(np.unique(bt)) == {0, 1, 2} and (bt[tuple(contact)] == 2).all()
    assert (bt[3:7, 3:7, 3:7] == 1).all()  # object 1's interior, inside its 1-voxel boundary shell


def test_touching_boundaries_do_not_depend_on_the_label_dtype():
    """int32 labels once wrapped the background sentinel and marked every rim pixel as touching."""
    labels = np.zeros((12, 20), np.int32)
    labels[2:10, 1:6], labels[2:10, 6:11], labels[2:10, 14:19] = 1, 2, 3
    for dtype in (np.int32, np.uint16, np.int64):
        gap = touching_boundaries(labels.astype(dtype))
        assert gap.sum() == 16 and gap[2:10, 5:7].all()
    assert touching_boundaries(two_blocks(1).astype(np.uint8)).sum() == 72


def test_3d_weight_map_follows_the_anisotropic_spacing():
    """Objects stacked along z: a gap voxel is 1 slice from one and 2 slices from the other;
    in units, d1 + d2 = 3 slices x spacing_z. w = w_c + 10 exp(-(d1 + d2)^2 / (2 * 5^2))."""
    labels = two_blocks(0)
    image = labels.astype(np.float32)
    iso = prepare_image(image, labels, N, weight_map={"w0": 10.0, "sigma": 5.0})
    thick = prepare_image(image, labels, N, weight_map={"w0": 10.0, "sigma": 5.0, "spacing": (2.0, 1.0, 1.0)})
    assert iso.weights.shape == labels.shape and iso.weights.dtype == np.float32
    voxel = (7, 5, 5)  # in the gap, the centre of the contact face
    assert iso.target[voxel] == 0
    # background is the more frequent class (w_c = 1); d1 = 1 slice, d2 = 2 slices
    np.testing.assert_allclose(iso.weights[voxel], 1 + 10 * np.exp(-3.0 ** 2 / 50), rtol=1e-5)
    np.testing.assert_allclose(thick.weights[voxel], 1 + 10 * np.exp(-6.0 ** 2 / 50), rtol=1e-5)
    assert iso.weights[voxel] == iso.weights[iso.target == 0].max()  # the gap weighs most of the background
    n_fg = (iso.target == 1).sum()
    np.testing.assert_allclose(iso.weights[iso.target == 1], (labels.size - n_fg) / n_fg, rtol=1e-5)
    gapped = prepare_image(image, labels, N, gap_weight=5.0)
    assert set(np.unique(gapped.weights)) == {1.0, 5.0} and (gapped.weights == 5.0).sum() == 72


def test_prepare_image_3d_channels_and_per_axis_padding(volumes):
    image, labels = volumes[0]
    prepared = prepare_image(image, labels, N, (24, 32, 64))
    assert prepared.image.shape == (1, 24, 48, 64) and prepared.target.shape == (24, 48, 64)
    assert (prepared.target[16:] == IGNORE).all() and (prepared.target[:, :, 48:] == IGNORE).all()
    assert (prepared.target[:16, :, :48] >= 0).all() and prepared.labels.shape == (24, 48, 64)
    two = np.stack([image, image[::-1]])  # (C, D, H, W)
    assert prepare_image(two, labels, N).image.shape == (2, 16, 48, 48)
    assert as_channels_first(image, 3).shape == (1, 16, 48, 48)
    with pytest.raises(ValueError, match=r"\(D, H, W\) or \(C, D, H, W\)"):
        prepare_image(image[None, None], labels, N)
    with pytest.raises(ValueError, match="do not match"):
        prepare_image(image[:, :40], labels, N)
    with pytest.raises(ValueError, match="one size per axis"):
        prepare_image(image, labels, N, (16, 16))


def test_3d_patches_shapes_determinism_and_foreground(volumes):
    images = [prepare_image(im, lab, N, (8, 32, 32)) for im, lab in volumes]
    x, y, w = PatchSampler(images, (8, 32, 32), np.random.default_rng(1)).batch(3)
    assert x.shape == (3, 1, 8, 32, 32) and x.dtype == np.float32
    assert y.shape == (3, 8, 32, 32) and y.dtype == np.int64 and set(np.unique(y)) <= {0, 1} and w is None
    x2, y2, _ = PatchSampler(images, (8, 32, 32), np.random.default_rng(1)).batch(3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    _, y, _ = PatchSampler(images, (4, 16, 24), np.random.default_rng(0), foreground_bias=1.0).batch(12)
    assert y.shape == (12, 4, 16, 24) and all((t == 1).any() for t in y)
    cube = PatchSampler(images, 16, np.random.default_rng(0), augment=False)
    assert cube.patch_shape == (16, 16, 16) and cube.batch(1)[0].shape == (1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="smaller than the patch"):
        PatchSampler(images, (32, 32, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="Mix of 2D and 3D"):
        PatchSampler(images + [prepare_image(np.zeros((40, 40)), np.zeros((40, 40), int), N)], 8,
                     np.random.default_rng(0))


def test_3d_weights_travel_with_the_patches(volumes):
    from napari_unet.training.augment import Augmenter

    images = [prepare_image(im, lab, N, (8, 32, 32), gap_weight=4.0) for im, lab in volumes]
    rigid = Augmenter(p_elastic=0.0, p_scale=0.0)  # flips and turns only: the weights keep their values
    _, y, w = PatchSampler(images, (8, 32, 32), np.random.default_rng(0), augment=rigid).batch(4)
    assert w.shape == y.shape == (4, 8, 32, 32) and set(np.unique(w)) <= {1.0, 4.0}
    assert (w == 4.0).any() and (y[w == 4.0] == 0).all()


def test_only_the_reviewed_voxels_count_in_3d(volumes):
    image, labels = volumes[0]
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:6] = True  # the user checked the first 6 slices only
    prepared = prepare_image(image, labels, N, (8, 32, 32), reviewed=reviewed)
    assert (prepared.target[6:] == IGNORE).all()
    np.testing.assert_array_equal(prepared.target[:6], binary_target(labels)[:6])
    sampler = PatchSampler([prepared], (8, 32, 32), np.random.default_rng(0), foreground_bias=0.0, augment=False)
    _, y, _ = sampler.batch(24)
    assert all((t != IGNORE).any() for t in y)  # every patch is anchored on a reviewed voxel
    with pytest.raises(ValueError, match="reviewed"):
        prepare_image(image, labels, N, reviewed=np.zeros_like(reviewed))
    with pytest.raises(ValueError, match="does not match"):
        prepare_image(image, labels, N, reviewed=reviewed[:, :10])


def test_patch_shapes_and_messages_of_the_trainer(volumes):
    assert DEFAULT_PATCH == {2: (256, 256), 3: (16, 64, 64)}
    assert patch_shape(build_model("unet-3d")) == (16, 64, 64)
    assert patch_shape(build_model("unet-2.5d-stack", features=(4, 8))) == (16, 64, 64)
    assert patch_shape(build_model("unet", features=(4, 8))) == (256, 256)
    assert patch_shape(build_model("unet-3d", features=(4, 8), strides=[(1, 2, 2)]), 32) == (32, 32, 32)
    assert patch_shape(build_model("unet-3d", features=(4, 8), strides=[(2, 4, 4)]), (6, 20, 20)) == (6, 20, 20)
    net3 = build_model("unet-3d", features=(4, 8, 16), strides=[(1, 2, 2), (2, 2, 2)])
    with pytest.raises(ValueError, match=r"multiple of \(2, 4, 4\) per axis"):
        patch_shape(net3, (8, 30, 32))
    with pytest.raises(ValueError, match="3 sizes"):
        patch_shape(net3, (32, 32))
    with pytest.raises(ValueError, match="multiple of 4 for this network, got 66"):  # 2D message unchanged
        patch_shape(build_model("unet", features=(4, 8, 16)), 66)
    image2d, labels2d = volumes[0][0][0], volumes[0][1][0]
    with pytest.raises(ValueError, match=r"trains on volumes: labels \(D, H, W\); training pair 0"):
        next(train_iter(net3, [(image2d, labels2d)], epochs=1))
    with pytest.raises(ValueError, match=r"trains on images: labels \(H, W\); validation pair 0"):
        next(train_iter(build_model("unet", features=(4, 8)), [(image2d, labels2d)], [volumes[0]], epochs=1))


def test_metrics_and_postprocessing_work_on_3d_labels(volumes):
    _, labels = volumes[0]
    scores = evaluate(labels, labels)
    assert scores["ap50"] == 1.0 and scores["n_true"] == labels.max() and scores["dice"] == 1.0
    moved = np.roll(labels, 3, axis=2)  # 3 px sideways: objects ~16 px wide still overlap
    worse = evaluate(labels, moved)
    assert 0.0 < worse["foreground_iou"] < 1.0 and worse["ap75"] < 1.0
    probabilities = binary_target(labels)[None].astype(np.float32)  # what a perfect binary network predicts
    restored = probabilities_to_labels(probabilities, min_size=16)
    assert restored.shape == labels.shape and evaluate(labels, restored)["ap50"] >= 0.8


def test_3d_training_with_reviewed_volumes_boundary_target_and_weight_map(volumes):
    """The stack 2.5D U-Net (fast) on (image, labels, reviewed) triples with the 3-class target and
    the anisotropic U-Net weight map: runs, stays finite and lowers the loss."""
    torch.manual_seed(0)
    net = build_model("unet-2.5d-stack", features=(8, 16, 32), out_channels=3)
    reviewed = np.ones(volumes[0][1].shape, bool)
    reviewed[:, :, 40:] = False
    triples = [(im, lab, reviewed) for im, lab in volumes[:2]]
    events = []
    result = run_to_end(train_iter(net, triples, patch_size=(8, 32, 32), batch_size=2, lr=1e-2, epochs=1,
                                   steps_per_epoch=24, seed=0, device="cpu", warmup_steps=3, target="boundary",
                                   weight_map={"w0": 10.0, "sigma": 5.0, "spacing": (2.0, 1.0, 1.0)}),
                        events.append)
    losses = [e.loss for e in events]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert result.stopped == "finished" and result.steps == 24
