"""Tests of the synthetic microscopy generators (no Qt, no torch)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet import synthetic
from napari_unet.synthetic import SAMPLES, fluorescent_nuclei, nuclei_3d, phase_contrast_cells

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"
DEFAULT_SHAPES = {"nuclei": (512, 512), "cells": (512, 512), "nuclei3d": (32, 128, 128)}
SMALL = {
    "nuclei": dict(shape=(128, 128), n_nuclei=10),
    "cells": dict(shape=(128, 128), n_cells=6),
    "nuclei3d": dict(shape=(16, 64, 64), n_nuclei=6),
}


@pytest.fixture(scope="module")
def default_outputs():
    return {name: f(seed=0) for name, f in SAMPLES.items()}


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels where a (4/6-connected) dilation of one hits the other."""
    pairs = set()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        grown_sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        sub = labels[grown_sl]
        obj = sub == i
        ring = ndi.binary_dilation(obj) & ~obj
        for j in np.unique(sub[ring]):
            if j > 0:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return pairs


def test_samples_registry():
    assert SAMPLES == {
        "nuclei": fluorescent_nuclei,
        "cells": phase_contrast_cells,
        "nuclei3d": nuclei_3d,
    }


@pytest.mark.parametrize("name", list(SAMPLES))
def test_dtypes_and_shapes(name, default_outputs):
    image, labels = default_outputs[name]
    assert image.dtype == np.uint16
    assert labels.dtype == np.int32
    assert image.shape == labels.shape == DEFAULT_SHAPES[name]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_custom_shape(name):
    image, labels = SAMPLES[name](seed=3, **SMALL[name])
    assert image.shape == labels.shape == SMALL[name]["shape"]
    assert labels.max() >= 1


@pytest.mark.parametrize("name", list(SAMPLES))
def test_labels_consecutive(name, default_outputs):
    _, labels = default_outputs[name]
    ids = np.unique(labels)
    n = int(labels.max())
    assert n >= 5
    np.testing.assert_array_equal(ids, np.arange(n + 1))


def test_object_counts(default_outputs):
    assert default_outputs["nuclei"][1].max() == 60
    assert default_outputs["nuclei3d"][1].max() == 30
    assert 15 <= default_outputs["cells"][1].max() <= 25


@pytest.mark.parametrize("name", list(SAMPLES))
def test_objects_are_single_pieces(name, default_outputs):
    _, labels = default_outputs[name]
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[sl] == i)[1] == 1, f"label {i} is split"


@pytest.mark.parametrize("name", list(SAMPLES))
def test_deterministic(name):
    f = SAMPLES[name]
    img_a, lab_a = f(seed=7, **SMALL[name])
    img_b, lab_b = f(seed=7, **SMALL[name])
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    img_c, lab_c = f(seed=8, **SMALL[name])
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(lab_a, lab_c)


def test_no_global_rng_use():
    np.random.seed(123)
    before = np.random.random(3)
    np.random.seed(123)
    for name, f in SAMPLES.items():
        f(seed=1, **SMALL[name])
    np.testing.assert_array_equal(np.random.random(3), before)


@pytest.mark.parametrize("name", ["nuclei", "cells", "nuclei3d"])
def test_touching_objects(name, default_outputs):
    _, labels = default_outputs[name]
    pairs = _touching_pairs(labels)
    assert len(pairs) >= (5 if name != "nuclei3d" else 2), pairs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_touching_other_seeds(seed):
    assert len(_touching_pairs(fluorescent_nuclei(seed=seed)[1])) >= 5
    assert len(_touching_pairs(phase_contrast_cells(seed=seed)[1])) >= 3


@pytest.mark.parametrize("name", list(SAMPLES))
def test_image_not_constant(name, default_outputs):
    image, _ = default_outputs[name]
    assert image.std() > 10
    assert image.max() > image.min()


@pytest.mark.parametrize("name", ["nuclei", "nuclei3d"])
def test_nuclei_brighter_than_background(name, default_outputs):
    image, labels = default_outputs[name]
    fg = image[labels > 0].astype(float).mean()
    bg = image[labels == 0].astype(float).mean()
    assert fg > 1.8 * bg
    # the camera offset is there: no pixel is (near) zero
    assert image.min() >= 50


def test_cells_darker_with_bright_halo(default_outputs):
    image, labels = default_outputs["cells"]
    img = image.astype(float)
    fg = labels > 0
    bg_level = np.median(img[~fg])
    halo = ndi.binary_dilation(fg, iterations=3) & ~fg
    far = ~ndi.binary_dilation(fg, iterations=25)
    assert img[fg].mean() < 0.9 * bg_level  # dark interiors
    assert img[halo].mean() > 1.1 * img[far].mean()  # bright halo around the cells


@pytest.mark.parametrize("name", list(SAMPLES))
def test_speed(name):
    f = SAMPLES[name]
    f(seed=0)  # warm up imports / caches
    t0 = time.perf_counter()
    f(seed=1)
    assert time.perf_counter() - t0 < 2.0


def test_pure_module():
    """The generator stays importable without torch / Qt / napari."""
    src = Path(synthetic.__file__).read_text()
    for mod in ("torch", "napari", "qtpy", "PyQt5", "magicgui"):
        assert f"import {mod}" not in src and f"from {mod}" not in src


@pytest.mark.parametrize("name", list(SAMPLES))
def test_committed_sample_files_match(name, default_outputs):
    tifffile = pytest.importorskip("tifffile")
    img_path = SAMPLE_DIR / f"{name}_image.tif"
    lab_path = SAMPLE_DIR / f"{name}_labels.tif"
    if not (img_path.exists() and lab_path.exists()):
        pytest.skip("sample_data files not present")
    image, labels = default_outputs[name]
    hint = "regenerate with: python sample_data/generate.py"
    stored_img = tifffile.imread(img_path)
    stored_lab = tifffile.imread(lab_path)
    assert stored_img.dtype == image.dtype and stored_lab.dtype == labels.dtype, hint
    assert np.array_equal(stored_img, image), hint
    assert np.array_equal(stored_lab, labels), hint
    assert img_path.stat().st_size < 1.5e6


def test_sample_data_layer_tuples():
    from napari_unet import _sample_data

    for fn, ndim in (
        (_sample_data.make_nuclei, 2),
        (_sample_data.make_cells, 2),
        (_sample_data.make_nuclei3d, 3),
    ):
        layers = fn()
        assert [t[2] for t in layers] == ["image", "labels"]
        (img, img_kw, _), (lab, lab_kw, _) = layers
        assert img.ndim == lab.ndim == ndim
        assert img.dtype == np.uint16 and lab.dtype == np.int32
        assert lab_kw["name"] == img_kw["name"] + " ground truth"
        lo, hi = img_kw["contrast_limits"]
        assert img.min() <= lo < hi <= img.max()
        if ndim == 3:
            assert tuple(img_kw["scale"]) == tuple(lab_kw["scale"]) == (2.0, 1.0, 1.0)


def test_nuclei_3d_contrast_is_adjustable():
    """Dim nuclei on a bright background (as in StarDist's 3D test stack) and alike brightness:
    the labels stay those of the default look, the contrast drops, the spread narrows."""
    shape = (16, 48, 48)
    default_image, default_labels = nuclei_3d(shape, 12, seed=3)
    image, labels = nuclei_3d(shape, 12, seed=3, background=60.0, mean_peak=100.0, brightness_spread=0.0)
    np.testing.assert_array_equal(labels, default_labels)

    def contrast(im, lab):
        return (np.median(im[lab > 0]) - np.median(im[lab == 0])) / np.median(im[lab == 0])

    assert contrast(image, labels) < 0.5 * contrast(default_image, default_labels)
    peaks = [image[labels == i].max() for i in range(1, labels.max() + 1)]
    default_peaks = [default_image[default_labels == i].max() for i in range(1, labels.max() + 1)]
    assert np.std(np.log(peaks)) < np.std(np.log(default_peaks))
