"""Every bundled model segments its sample image on the CPU with non-trivial masks (no Qt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.catalog import bundled_models
from napari_unet.inference.predictor import run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.metrics import evaluate
from napari_unet.modelfile import load_model, read_config
from napari_unet.models import available_models, get_spec

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
# every variant the issue names ships trained weights
FAMILY = ("unet", "unet++", "unet3+", "resunet", "mobile-unet", "eff-unet", "unet-3d", "unet-2.5d", "unet-2.5d-stack")


def test_the_whole_family_is_registered_and_bundled():
    assert set(FAMILY) <= set(available_models())
    missing = [name for name in FAMILY if name not in bundled_models()]
    assert not missing, f"no bundled weights for {missing}"
    total = sum(p.stat().st_size for p in bundled_models().values())
    assert total < 25e6, f"bundled weights take {total / 1e6:.1f} MB (limit 25 MB)"


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_bundled_model_segments_its_sample(name):
    config = read_config(bundled_models()[name])
    assert config["provenance"].get("trained") and config["card"], "a bundled model needs provenance and a card"
    assert (bundled_models()[name].with_suffix(".md")).exists()
    model = load_model(name)
    three_d = get_spec(config["architecture"]).spatial_dims == 3
    stem = "nuclei3d" if three_d else "nuclei"
    image = tifffile.imread(SAMPLES / f"{stem}_image.tif")
    truth = tifffile.imread(SAMPLES / f"{stem}_labels.tif")
    seg = run_to_end(segment_iter(model, image, device="cpu"))
    assert seg.labels.shape == truth.shape
    n_true, n_found = int(truth.max()), int(seg.labels.max())
    assert 0.5 * n_true <= n_found <= 1.5 * n_true, f"{name}: {n_found} objects for {n_true}"
    scores = evaluate(truth, seg.labels)
    assert scores["dice"] > 0.7, f"{name}: pixel Dice {scores['dice']:.3f}"
    assert scores["ap50"] > 0.3, f"{name}: AP@0.5 {scores['ap50']:.3f}"


def _flat_background_image() -> np.ndarray:
    """A dim, slightly noisy background with three bright discs (so normalisation has a range)."""
    rng = np.random.default_rng(0)
    image = (100 + rng.normal(0, 3, (256, 256))).astype(np.float32)
    yy, xx = np.mgrid[:256, :256]
    for cy, cx in ((60, 60), (180, 90), (120, 200)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] += 200
    return image


@pytest.mark.parametrize("name", [n for n in sorted(bundled_models())
                                  if get_spec(read_config(bundled_models()[n])["architecture"]).spatial_dims == 2])
def test_bundled_2d_model_paints_no_stripes_on_a_flat_background(name):
    """No row, column or checkerboard pattern of period 2 in the probabilities of a flat region:
    the first bundled U-Net++ averaged 0.18 on even rows and 0.12 on odd ones there."""
    from napari_unet.inference.predictor import predict

    probs = predict(load_model(name), _flat_background_image()).foreground
    background = probs[8:48, 96:184]  # far from the discs and the image border
    means = [float(background[a::2, b::2].mean()) for a in (0, 1) for b in (0, 1)]
    assert max(means) - min(means) < 0.01, f"{name}: parity means {np.round(means, 3)}"
