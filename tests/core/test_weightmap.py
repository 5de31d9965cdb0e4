"""The U-Net weight map (eq. 2): hand values, class balance, anisotropy, brute force, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.training import weightmap
from napari_unet.training.weightmap import separation_cutoff, weight_map

TOLERANCE = 1e-3  # the function's default absolute tolerance on the separation term


def two_discs(gap: int = 4, radius: int = 10, shape=(64, 80)) -> tuple[np.ndarray, int, int, int]:
    """Two discs on one row; their facing edge pixels are ``gap`` pixels apart (gap - 1 background)."""
    yy, xx = np.indices(shape)
    cy, cx1 = shape[0] // 2, 20
    cx2 = cx1 + 2 * radius + gap
    labels = np.zeros(shape, np.int32)
    labels[(yy - cy) ** 2 + (xx - cx1) ** 2 <= radius**2] = 1
    labels[(yy - cy) ** 2 + (xx - cx2) ** 2 <= radius**2] = 2
    return labels, cy, cx1 + radius, cx2 - radius  # row, right edge of disc 1, left edge of disc 2


def brute_force(labels, w0=10.0, sigma=5.0, spacing=None, class_weights=(1.0, 1.0)):
    """Reference: one full-image EDT per object, the two smallest distances per pixel."""
    ids = [i for i in np.unique(labels) if i != 0]
    dist = np.stack([ndi.distance_transform_edt(labels != i, sampling=spacing) for i in ids]
                    + [np.full(labels.shape, np.inf)] * 2)
    dist.sort(axis=0)
    d1, d2 = dist[0], dist[1]
    term = np.where((labels == 0) & np.isfinite(d2), w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0.0)
    w_bg, w_fg = class_weights
    return np.where(labels == 0, w_bg, w_fg) + term, term


def random_labels(rng, shape, n_objects, ids=None) -> np.ndarray:
    """Random balls and boxes (later ones on top), a few of them touching or overlapping."""
    labels = np.zeros(shape, np.int64)
    grid = np.indices(shape)
    for k in range(n_objects):
        centre = [rng.integers(0, n) for n in shape]
        radius = rng.uniform(2, 7)
        if rng.random() < 0.5:
            mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        else:
            mask = np.all([np.abs(g - c) <= radius * rng.uniform(0.4, 1) for g, c in zip(grid, centre)], axis=0)
        labels[mask] = k + 1 if ids is None else ids[k]
    return labels


# -- hand-computed values --------------------------------------------------------------------

def test_two_discs_gap_midpoint_hand_value():
    labels, row, edge1, edge2 = two_discs(gap=4)
    assert edge2 - edge1 == 4 and labels[row, edge1] == 1 and labels[row, edge2] == 2
    w = weight_map(labels)
    n_fg = np.count_nonzero(labels)
    n_bg = labels.size - n_fg
    # background is the frequent class: weight 1; objects n_bg / n_fg
    gap_value = 1.0 + 10.0 * math.exp(-16.0 / 50.0)  # d1 = d2 = 2, or d1 = 1, d2 = 3
    for x in (edge1 + 1, edge1 + 2, edge1 + 3):
        assert w[row, x] == pytest.approx(gap_value, rel=1e-6)
    # inside the objects: w_c only, even right at the gap
    assert w[row, edge1] == pytest.approx(n_bg / n_fg, rel=1e-6)
    assert w[row, 20] == pytest.approx(n_bg / n_fg, rel=1e-6)
    # far away from both discs (d1 + d2 > 60 px): the term is below 1e-30
    assert w[0, 0] == pytest.approx(1.0, abs=1e-6)
    # another background pixel of the gap, above the line: matches the brute-force reference
    ref, _ = brute_force(labels, class_weights=(1.0, n_bg / n_fg))
    np.testing.assert_allclose(w, ref, atol=TOLERANCE, rtol=0)
    assert w[row - 5, edge1 + 2] == pytest.approx(ref[row - 5, edge1 + 2], rel=1e-6)


def test_wider_gap_and_custom_parameters():
    labels, row, edge1, edge2 = two_discs(gap=10)
    w = weight_map(labels, w0=5.0, sigma=3.0, class_weights=None)
    mid = (edge1 + edge2) // 2  # d1 = d2 = 5
    assert w[row, mid] == pytest.approx(1.0 + 5.0 * math.exp(-100.0 / 18.0), rel=1e-6)
    assert w[row, 20] == 1.0


def test_single_object_has_no_separation_term():
    labels = np.zeros((40, 50), np.uint16)
    labels[10:25, 5:20] = 7
    w = weight_map(labels)
    n_fg = 15 * 15
    expected = np.where(labels > 0, (labels.size - n_fg) / n_fg, 1.0)
    np.testing.assert_array_equal(w, expected.astype(np.float32))
    # a second object within reach switches the term on
    labels[30:33, 30:33] = 9
    assert weight_map(labels, class_weights=None).max() > 1.0


def test_no_objects_and_w0_zero():
    assert np.array_equal(weight_map(np.zeros((5, 6), np.int32)), np.ones((5, 6), np.float32))
    labels, row, edge1, _ = two_discs()
    w = weight_map(labels, w0=0.0, class_weights=(2.0, 3.0))
    np.testing.assert_array_equal(w, np.where(labels > 0, 3.0, 2.0).astype(np.float32))


# -- class balance ---------------------------------------------------------------------------

def test_balanced_class_weights_exact():
    labels = np.zeros((4, 4), np.int32)
    labels[0, :] = 1  # 4 foreground, 12 background pixels
    w = weight_map(labels, w0=0.0)
    assert w.dtype == np.float32 and w.shape == (4, 4)
    assert np.all(w[0] == 3.0) and np.all(w[1:] == 1.0)  # N/(2 n_k) normalised: 12/4 and 12/12
    # foreground the frequent class: it weighs 1, background n_fg / n_bg
    w = weight_map(1 - labels, w0=0.0)
    assert np.all(w[0] == 3.0) and np.all(w[1:] == 1.0)
    # ignored pixels leave the counts and get weight 0: 4 foreground vs 8 background
    ignore = np.zeros((4, 4), bool)
    ignore[3] = True
    w = weight_map(labels, w0=0.0, ignore_mask=ignore)
    assert np.all(w[0] == 2.0) and np.all(w[1:3] == 1.0) and np.all(w[3] == 0.0)
    # one class only: nothing to balance
    assert np.all(weight_map(np.ones((3, 3), np.int8), w0=0.0) == 1.0)


def test_ignore_mask_keeps_neighbours_for_distances():
    labels, row, edge1, _ = two_discs(gap=4)
    ignore = np.zeros(labels.shape, bool)
    ignore[:, 50:] = True  # hides most of disc 2, not the gap
    w = weight_map(labels, ignore_mask=ignore, class_weights=None)
    assert w[row, edge1 + 2] == pytest.approx(1.0 + 10.0 * math.exp(-16.0 / 50.0), rel=1e-6)
    assert np.all(w[:, 50:] == 0.0)


# -- anisotropy and brute force --------------------------------------------------------------

def test_anisotropic_3d_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, (10, 24, 28), 7)
    spacing = (2.0, 1.0, 1.0)
    for sigma in (3.0, 5.0):
        w = weight_map(labels, sigma=sigma, spacing=spacing, class_weights=None)
        ref, term = brute_force(labels, sigma=sigma, spacing=spacing)
        assert np.count_nonzero(term > TOLERANCE) > 100  # the comparison is not vacuous
        np.testing.assert_allclose(w, ref, atol=TOLERANCE, rtol=0)
        above = term > TOLERANCE
        np.testing.assert_allclose(w[above], ref[above], atol=1e-4, rtol=0)
    # spacing changes the answer (the z neighbours are further away)
    assert not np.allclose(weight_map(labels, sigma=3.0, class_weights=None),
                           weight_map(labels, sigma=3.0, spacing=spacing, class_weights=None), atol=1e-3)


def test_physical_units_scale_with_sigma():
    labels = random_labels(np.random.default_rng(5), (40, 40), 6)
    pixels = weight_map(labels, sigma=4.0)
    microns = weight_map(labels, sigma=4.0 * 0.325, spacing=0.325)
    np.testing.assert_allclose(microns, pixels, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_random_2d_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    n = int(rng.integers(2, 12))
    ids = (np.arange(1, n + 1) * 10**11 + rng.integers(0, 10**10, n)) if seed % 2 else None  # sparse huge ids
    labels = random_labels(rng, shape, n, ids)
    spacing = (1.0, 1.0) if seed < 3 else (float(rng.uniform(0.5, 2)), float(rng.uniform(0.5, 2)))
    sigma = float(rng.uniform(2, 6))
    w = weight_map(labels, sigma=sigma, spacing=spacing, class_weights=None)
    ref, term = brute_force(labels, sigma=sigma, spacing=spacing)
    np.testing.assert_allclose(w, ref, atol=TOLERANCE, rtol=0)
    above = term > TOLERANCE
    np.testing.assert_allclose(w[above], ref[above], atol=1e-4, rtol=0)
    # a tighter tolerance is honoured everywhere
    tight = weight_map(labels, sigma=sigma, spacing=spacing, class_weights=None, tolerance=1e-7)
    np.testing.assert_allclose(tight, ref, atol=1e-5, rtol=0)


def test_no_full_image_transform_per_object(monkeypatch):
    """Each object's distance transform runs on its grown bounding box only."""
    labels = np.zeros((300, 300), np.int32)
    for k, (y, x) in enumerate([(30, 30), (30, 52), (150, 150), (260, 40), (270, 270)]):
        labels[y - 8:y + 8, x - 8:x + 8] = k + 1
    sizes = []
    real = ndi.distance_transform_edt

    def spy(image, *args, **kwargs):
        sizes.append(np.asarray(image).size)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(weightmap.ndi, "distance_transform_edt", spy)
    weight_map(labels)
    reach = 16 + 2 * (math.floor(separation_cutoff(10.0, 5.0)) + 1)
    assert len(sizes) == 5 and max(sizes) <= reach**2 < labels.size / 10


def test_cutoff_formula():
    r = separation_cutoff(10.0, 5.0, 1e-3)
    assert 10.0 * math.exp(-r * r / 50.0) == pytest.approx(1e-3)
    assert separation_cutoff(1e-4, 5.0, 1e-3) == 0.0


# -- input errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("labels, message", [
    (np.zeros((4, 4), np.float32), "integer"),
    (np.zeros((4, 4), bool), "skimage.measure.label"),
    (np.zeros(4, np.int32), "2D"),
    (np.zeros((2, 2, 2, 2), np.int32), "3D"),
    (np.full((3, 3), -1, np.int32), ">= 0"),
])
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        weight_map(labels)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"w0": -1.0}, "w0"), ({"spacing": (1.0, 1.0, 1.0)}, "one value per axis"),
    ({"spacing": (1.0, 0.0)}, "> 0"), ({"spacing": "ab"}, "spacing"),
    ({"class_weights": "inverse"}, "balanced"), ({"class_weights": (1.0,)}, "two non-negative"),
    ({"class_weights": (1.0, -2.0)}, "two non-negative"),
    ({"ignore_mask": np.zeros((3, 3), bool)}, "shape"), ({"ignore_mask": np.zeros((4, 4))}, "boolean"),
    ({"tolerance": 0.0}, "tolerance"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        weight_map(np.zeros((4, 4), np.int32), **kwargs)


def test_the_loss_weight_map_of_a_partly_reviewed_image():
    """Objects just outside the reviewed region still separate their reviewed neighbours, and the
    unreviewed pixels do not count in the class balance (they are ignored by the loss)."""
    from napari_unet.modelfile import DEFAULT_NORMALIZATION
    from napari_unet.training.patches import prepare_image

    labels = np.zeros((40, 60), np.int64)
    labels[10:30, 5:25] = 1  # reviewed
    labels[10:30, 31:51] = 2  # outside the reviewed region, 6 px to the right of object 1
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:, :30] = True
    image = labels.astype(np.float32)
    params = {"w0": 10.0, "sigma": 5.0, "class_weights": "balanced"}
    part = prepare_image(image, labels, DEFAULT_NORMALIZATION, weight_map=params, reviewed=reviewed).weights
    whole = prepare_image(image, labels, DEFAULT_NORMALIZATION, weight_map=params).weights
    gap = (20, 28)  # reviewed background between the two objects
    assert part[gap] > 4.0 and part[gap] == pytest.approx(whole[gap], rel=1e-3)  # 1 + 10 exp(-(4+3)²/50)
    # class balance over the reviewed pixels only: 400 object pixels of 1200, background weighs 1
    assert part[20, 10] == pytest.approx(800 / 400, rel=1e-3)
    assert (part[~reviewed] == 0).all()
