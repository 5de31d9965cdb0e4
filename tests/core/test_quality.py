"""Implausible results (noise, a blank slide, a wrong model) are said in one line, never refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet.inference import quality
from napari_unet.inference.large import segment_to_zarr
from napari_unet.inference.predictor import run_to_end
from napari_unet.inference.segment import segment_iter

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def _noise(shape=(384, 384), sigma=4.0, seed=0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(0, 1, shape), sigma).astype(np.float32)


def test_counts_and_rules():
    # probabilities come as (K, *spatial), K = 1 here; two classes add up to the foreground
    assert quality.count(np.full((2, 10, 10), 0.45)).unsure == 0 and quality.count(np.full((2, 10, 10), 0.15)).unsure == 100
    fg = np.zeros((100, 100), np.float32)
    fg[:20] = 0.5  # 20 % unsure
    labels = np.zeros((100, 100), np.int32)
    labels[:10, :10] = 1
    c = quality.count(fg[None], labels)
    assert (c.pixels, c.unsure) == (10000, 2000) and c.largest_fraction == pytest.approx(0.01)
    assert "unsure of 20 %" in quality.warning(c, 1, "unet")
    assert quality.warning(quality.count(np.where(fg > 0, 0.9, 0.0)[None], labels), 1, "unet") is None
    whole = np.ones((100, 100), np.int32)
    message = quality.warning(quality.count(np.ones((1, 100, 100)), whole), 1, "unet")
    assert message.startswith("One object covers 100 %")
    # counts add up over blocks: a block 20 % unsure beside a sure one is 10 % unsure, under the limit
    block = np.full((10, 10), 0.9)
    block[:2] = 0.5
    total = quality.count(block[None]) + quality.count(np.full((1, 10, 10), 0.9))
    assert (total.pixels, total.unsure) == (200, 20)
    assert "unsure" in quality.warning(quality.count(block[None]), 0, "unet")
    assert quality.warning(total, 0, "unet") is None and quality.warning(quality.ResultCounts(), 0, "unet") is None


def test_noise_is_flagged_nuclei_are_not():
    """The bundled unet on smoothed noise: a result with a warning; on the sample nuclei: none."""
    seg = run_to_end(segment_iter("unet", _noise()))
    assert seg.labels.max() > 0  # the result is still given
    assert any("is unsure of" in w for w in seg.prediction.warnings), seg.prediction.warnings
    nuclei = tifffile.imread(SAMPLE / "nuclei_image.tif")
    seg = run_to_end(segment_iter("unet", nuclei))
    assert seg.labels.max() > 10
    assert not any("unsure" in w or "covers" in w for w in seg.prediction.warnings)


def test_block_wise_prediction_says_it_too(tmp_path):
    result = segment_to_zarr("unet", _noise((512, 512)), tmp_path / "l.zarr", block_size=256)
    assert sum(result.n_objects) > 0
    assert any("is unsure of" in w for w in result.warnings), result.warnings


def test_cli_warns_and_still_writes(tmp_path, capsys):
    from napari_unet.cli import main

    tifffile.imwrite(tmp_path / "blank.tif", (_noise() * 1000 + 20000).astype(np.uint16))
    assert main(["predict", "unet", str(tmp_path / "blank.tif"), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "blank.tif: warning:" in err and "is unsure of" in err
    assert tifffile.imread(tmp_path / "out" / "blank.tif").max() > 0
