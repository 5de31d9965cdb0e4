"""Seeded augmentation: elastic deformation, flips / quarter turns, scale, intensity, noise (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.training.augment import (Augmenter, displacement_field, elastic_deform, random_flip_rot90,
                                          random_intensity, random_noise, random_scale, warp)


def discs(shape, n=12, radius=6, seed=0) -> np.ndarray:
    """Instance labels: ``n`` non-overlapping discs / balls with ids 1..n on a grid of centres."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    grid = np.indices(shape)
    per_axis = int(np.ceil(n ** (1 / len(shape))))
    centres = np.stack(np.meshgrid(*[np.linspace(radius + 2, s - radius - 3, per_axis) for s in shape],
                                   indexing="ij"), -1).reshape(-1, len(shape))
    for i, centre in enumerate(rng.permutation(centres)[:n], start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        labels[inside] = i
    return labels


def sample(shape=(64, 64), channels=2, seed=0):
    labels = discs(shape)
    rng = np.random.default_rng(seed)
    image = (rng.random((channels,) + shape) * 0.2 + (labels > 0)).astype(np.float32)
    weights = (1 + ndi.distance_transform_edt(labels == 0)).astype(np.float32)
    return image, labels, weights


@pytest.mark.parametrize("shape", [(64, 64), (16, 32, 32)])
def test_elastic_is_seeded_and_keeps_shapes_and_dtypes(shape):
    image, labels, weights = sample(shape)
    a = elastic_deform(np.random.default_rng(1), (image, labels, weights), sigma=4.0)
    b = elastic_deform(np.random.default_rng(1), (image, labels, weights), sigma=4.0)
    c = elastic_deform(np.random.default_rng(2), (image, labels, weights), sigma=4.0)
    for x, y, original in zip(a, b, (image, labels, weights)):
        assert x.shape == original.shape and x.dtype == original.dtype
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_elastic_labels_keep_their_ids_and_most_objects():
    image, labels, weights = sample((96, 96))
    for seed in range(5):
        _, warped, _ = elastic_deform(np.random.default_rng(seed), (image, labels, weights))
        ids = set(np.unique(warped))
        assert ids <= set(np.unique(labels))
        assert len(ids - {0}) >= 0.75 * (len(np.unique(labels)) - 1)


def test_sigma_zero_is_the_identity():
    image, labels, weights = sample((40, 48))
    out = elastic_deform(np.random.default_rng(0), (image, labels, weights), sigma=0.0, orders=(3, 0, 1))
    np.testing.assert_allclose(out[0], image, atol=1e-5)
    np.testing.assert_array_equal(out[1], labels)
    np.testing.assert_allclose(out[2], weights, atol=1e-5)


@pytest.mark.parametrize("shape, sigma", [((256, 256), 10.0), ((32, 64, 64), 1.5)])
def test_displacement_field_is_smooth(shape, sigma):
    field = displacement_field(np.random.default_rng(0), shape, grid=3, sigma=sigma)
    assert field.shape == (len(shape),) + shape and field.dtype == np.float32
    assert 0.2 * sigma < field.std() < 3 * sigma
    for axis in range(1, field.ndim):
        step = np.abs(np.diff(field, axis=axis)).max()
        assert step < 1.0  # neighbours move by nearly the same amount: no tearing, no folding
        # the change itself is smooth (for uncorrelated noise the second difference is ~2x the first)
        assert np.abs(np.diff(field, 2, axis=axis)).max() < 0.5 * step


def test_fold_free_sigma_caps_small_patches():
    augmenter = Augmenter()
    np.testing.assert_allclose(augmenter.elastic_sigma_for((256, 256)), [10, 10])  # the paper's sigma
    np.testing.assert_allclose(augmenter.elastic_sigma_for((64, 64)), [3.15, 3.15])  # spacing 31.5 / 10
    # a short depth caps the depth displacement only, not the in-plane one
    np.testing.assert_allclose(augmenter.elastic_sigma_for((24, 128, 128)), [1.15, 6.35, 6.35])
    np.testing.assert_allclose(augmenter.elastic_sigma_for((16, 64, 64)), [0.75, 3.15, 3.15])
    assert Augmenter(elastic_fold_free=False).elastic_sigma_for((64, 64)).tolist() == [10, 10]


@pytest.mark.parametrize("shape", [(64, 64), (16, 64, 64), (24, 128, 128)])
def test_capped_fields_never_fold(shape):
    """The map x -> x + u(x) keeps a positive Jacobian determinant everywhere (no folding), also
    for anisotropic patches whose depth is much shorter than their side."""
    sigma = Augmenter().elastic_sigma_for(shape)
    for seed in range(8):
        field = displacement_field(np.random.default_rng(seed), shape, sigma=sigma).astype(np.float64)
        jacobian = np.empty(shape + (len(shape), len(shape)))
        for i in range(len(shape)):
            for j, d in enumerate(np.gradient(field[i], axis=tuple(range(len(shape))))):
                jacobian[..., i, j] = d + (i == j)
        assert np.linalg.det(jacobian).min() > 0.25  # 0 would be a fold; ~0.45 is the least seen


def test_image_and_labels_stay_aligned():
    _, labels, _ = sample((96, 96))
    mask = (labels > 0).astype(np.float32)
    warped_mask, warped_labels = elastic_deform(np.random.default_rng(3), (mask[None], labels), orders=(1, 0))
    agree = (warped_mask[0] > 0.5) == (warped_labels > 0)
    assert agree.mean() > 0.98


def test_channels_are_warped_alike():
    image, labels, _ = sample((48, 48), channels=1)
    stacked = np.concatenate([image, image])
    out, _ = elastic_deform(np.random.default_rng(0), (stacked, labels))
    np.testing.assert_array_equal(out[0], out[1])


def test_flip_rot90_moves_everything_alike():
    image, labels, weights = sample((32, 32), channels=1)
    image[0] = labels  # an image that equals the labels must stay equal
    for seed in range(6):
        im, lab, w = random_flip_rot90(np.random.default_rng(seed), (image, labels, weights))
        np.testing.assert_array_equal(im[0], lab)
        assert sorted(w.ravel()) == sorted(weights.ravel())
    # non-square (H, W) and 3D keep their shapes
    for shape in [(20, 32), (8, 20, 32)]:
        image, labels, _ = sample(shape)
        im, lab, none = random_flip_rot90(np.random.default_rng(1), (image, labels, None))
        assert im.shape == image.shape and lab.shape == labels.shape and none is None


def test_random_scale_keeps_shape_and_ids():
    image, labels, weights = sample((64, 64))
    for seed in range(3):
        im, lab, w = random_scale(np.random.default_rng(seed), (image, labels, weights), scale=(0.7, 1.4))
        assert im.shape == image.shape and lab.dtype == labels.dtype and w.shape == weights.shape
        assert set(np.unique(lab)) <= set(np.unique(labels))
    # scale 2 about the centre: the centre pixel stays, a pixel 10 from it comes from 5 away
    ramp = np.tile(np.arange(65, dtype=np.float32), (65, 1))
    (zoomed,) = random_scale(np.random.default_rng(0), (ramp,), scale=(2.0, 2.0))
    assert zoomed[32, 32] == pytest.approx(32) and zoomed[32, 42] == pytest.approx(37)


def test_intensity_and_noise_stay_finite_and_seeded():
    image = np.random.default_rng(0).normal(0.3, 0.5, (2, 32, 32)).astype(np.float32)  # negatives too
    image[1] = 0.5  # a constant channel must not divide by zero
    out = random_intensity(np.random.default_rng(1), image, gamma=(0.5, 2.0))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, random_intensity(np.random.default_rng(1), image, gamma=(0.5, 2.0)))
    noisy = random_noise(np.random.default_rng(1), image, std=(0.1, 0.1))
    assert np.isfinite(noisy).all() and 0.05 < (noisy - image).std() < 0.15
    identity = random_intensity(np.random.default_rng(1), image, scale=(1, 1), shift=(0, 0), gamma=(1, 1))
    np.testing.assert_allclose(identity, image, atol=1e-5)


@pytest.mark.parametrize("shape", [(48, 48), (12, 32, 32)])
def test_augmenter_round_trip(shape):
    image, labels, weights = sample(shape)
    target = (labels > 0).astype(np.int8)
    target[:2] = -1  # ignored pixels survive as -1
    always = Augmenter(p_elastic=1.0, p_scale=1.0, p_intensity=1.0, p_noise=1.0, elastic_sigma=4.0)
    a = always(np.random.default_rng(5), image, target, weights)
    b = always(np.random.default_rng(5), image, target, weights)
    for x, y, original in zip(a, b, (image, target, weights)):
        assert x.shape == original.shape and x.dtype == original.dtype
        np.testing.assert_array_equal(x, y)
        assert np.isfinite(x).all()
    assert set(np.unique(a[1])) <= {-1, 0, 1}
    _, _, none = Augmenter()(np.random.default_rng(0), image, target, None)
    assert none is None
    off = Augmenter(p_flip_rot=0, p_elastic=0, p_scale=0, p_intensity=0, p_noise=0)
    for x, original in zip(off(np.random.default_rng(0), image, target, weights), (image, target, weights)):
        np.testing.assert_array_equal(x, original)


def test_input_errors():
    image, labels, weights = sample((32, 32))
    rng = np.random.default_rng(0)
    bad = [
        lambda: elastic_deform(rng, (image, labels[:16])),  # spatial shapes differ
        lambda: elastic_deform(rng, (labels, labels), orders=(0,)),  # one order per array
        lambda: elastic_deform(rng, (labels,), orders=(1,)),  # labels must be nearest
        lambda: elastic_deform(rng, (labels,), sigma=-1.0),
        lambda: elastic_deform(rng, (labels,), grid=1),
        lambda: elastic_deform(rng, (np.zeros(5),)),  # 1D
        lambda: elastic_deform(0, (labels,)),  # not a Generator
        lambda: random_scale(rng, (labels,), scale=(1.2, 0.8)),
        lambda: random_intensity(rng, image, gamma=(0.0, 1.0)),
        lambda: random_intensity(rng, image[0]),  # no channel axis
        lambda: random_noise(rng, image, std=(-1, 0)),
        lambda: Augmenter(p_elastic=1.5),
        lambda: Augmenter()(rng, image, labels[:16], None),
        lambda: Augmenter()(rng, image, labels.astype(np.float32), None),
        lambda: Augmenter()(rng, image, labels, weights[:16]),
        lambda: warp((labels,), np.indices(labels.shape), orders=(7,)),
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()
