"""The objects' size estimated from first passes of a model that declares the size it works at."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.inference.estimate import estimate_diameter
from napari_unet.inference.large import segment_to_zarr_iter
from napari_unet.inference.predictor import run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.modelfile import LoadedModel, load_model
from napari_unet.scaling import median_diameter, resize_image, resize_labels, scaled_shape

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


@pytest.fixture(scope="module")
def sized():
    """The bundled unet, declared to work at its training nuclei's size and to estimate sizes."""
    base = load_model("unet")
    config = copy.deepcopy(base.config)
    config["input"]["object_diameter"] = 16.0
    config["input"].pop("image_object_diameter", None)
    return LoadedModel(base.net, config, base.path, "unet")


@pytest.fixture(scope="module")
def nuclei():
    return tifffile.imread(SAMPLE / "nuclei_image.tif"), tifffile.imread(SAMPLE / "nuclei_labels.tif")


@pytest.mark.parametrize("factor", [1.0, 2.5])
def test_estimate_follows_the_objects_size(sized, nuclei, factor):
    image, labels = nuclei
    if factor != 1:
        shape = scaled_shape(labels.shape, factor)
        image, labels = resize_image(image.astype(np.float32), shape), resize_labels(labels, shape)
    truth = median_diameter(labels)
    est = estimate_diameter(sized, image)
    assert est.diameter is not None and 0.75 < est.diameter / truth < 1.33, (truth, est.describe())
    assert 1 <= len(est.passes) <= 4 and "objects of" in est.describe()


def test_segmenting_estimates_when_no_size_is_given(sized, nuclei, tiny_model):
    image, labels = nuclei
    big = resize_image(image.astype(np.float32), scaled_shape(image.shape, 2.5))
    seg = run_to_end(segment_iter(sized, big))
    assert seg.size_estimate is not None and seg.prediction.scale < 0.6
    given = run_to_end(segment_iter(sized, big, diameter=40.0))  # a size given: no estimate
    assert given.size_estimate is None and given.prediction.scale == pytest.approx(16 / 40)
    auto = run_to_end(segment_iter(sized, big, diameter="auto"))
    assert auto.size_estimate.diameter == pytest.approx(seg.size_estimate.diameter)
    with pytest.raises(ValueError, match="number of pixels or 'auto'"):
        run_to_end(segment_iter(sized, big, diameter="large"))
    # a model that declares no size ignores "auto", and one cannot estimate with it
    plain = tiny_model  # random weights, no object size declared
    assert run_to_end(segment_iter(plain, image, diameter="auto")).size_estimate is None
    with pytest.raises(ValueError, match="declares no object size"):
        estimate_diameter(plain, image)


def test_blank_image_finds_no_size(sized):
    est = estimate_diameter(sized, np.zeros((200, 200), np.float32))
    assert est.diameter is None and "no object found" in est.describe()
    scales = [at for at, _, _ in est.passes]  # it looked larger, then smaller (it stopped at the top)
    assert max(scales) > scales[0] > min(scales), scales
    seg = run_to_end(segment_iter(sized, np.zeros((200, 200), np.float32)))  # falls back to the model's own size
    assert seg.prediction.scale == 1.0 and seg.labels.max() == 0


def test_block_wise_prediction_estimates_too(sized, nuclei, tmp_path):
    image, _ = nuclei
    big = resize_image(image.astype(np.float32), scaled_shape(image.shape, 2.5))
    events = []
    result = run_to_end(segment_to_zarr_iter(sized, big, tmp_path / "l.zarr", block_size=512), events.append)
    assert result.size_estimate is not None and result.size_estimate.diameter > 25
    assert sum(result.n_objects) > 10
    # the estimate's passes are reported (before the blocks), not a silent pause
    stages = [e.stage for e in events]
    assert stages[0] == "estimate" and stages.index("start") > stages.index("estimate")
    assert any("estimating the object size" in e.message for e in events if e.stage == "estimate")


def test_cli_estimates_by_default_and_takes_auto(sized, nuclei, tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.modelfile import make_config, save_model

    path = save_model(tmp_path / "general", sized.net, make_config(sized.net, "unet", object_diameter=16))
    image, _ = nuclei
    tifffile.imwrite(tmp_path / "big.tif", resize_image(image.astype(np.float32), scaled_shape(image.shape, 2.5)))
    assert main(["predict", str(path), str(tmp_path / "big.tif"), "-o", str(tmp_path / "out")]) == 0
    assert "big.tif: object size estimated: objects of" in capsys.readouterr().err
    assert main(["predict", str(path), str(tmp_path / "big.tif"), "-o", str(tmp_path / "out2"),
                 "--object-size", "40"]) == 0
    assert "estimated" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["predict", str(path), str(tmp_path / "big.tif"), "-o", str(tmp_path / "out3"), "--object-size", "huge"])
    assert exit_.value.code == 2
    assert "number of pixels or 'auto'" in capsys.readouterr().err


def test_a_model_may_measure_sizes_with_the_bundled_unet(nuclei, make_random_model):
    """The bundled family names ``unet`` as its size estimator (``input.size_estimator``): a model
    whose own first passes would find fragments gets unet's estimate, and an estimator that is not
    installed leaves the model's own passes."""
    from napari_unet.inference.estimate import _estimator
    from napari_unet.inference.predictor import Predictor

    random = load_model(make_random_model("estimated-by-unet"))
    config = copy.deepcopy(random.config)
    config["input"]["object_diameter"] = 30.0
    delegating = LoadedModel(random.net, dict(config, input={**config["input"], "size_estimator": "unet"}),
                             random.path, "delegating")
    missing = LoadedModel(random.net, dict(config, input={**config["input"], "size_estimator": "no-such"}),
                          random.path, "missing")
    assert _estimator(Predictor(delegating, device="cpu")).model.name == "unet"
    assert _estimator(Predictor(missing, device="cpu")).model.name == "missing"
    # the estimator is loaded once, not for every image or click
    assert _estimator(Predictor(delegating, device="cpu")) is _estimator(Predictor(delegating, device="cpu"))
    image = nuclei[0]
    assert estimate_diameter(delegating, image, device="cpu").diameter == \
        estimate_diameter("unet", image, device="cpu").diameter


def test_a_block_wise_files_progress_never_goes_back_after_its_estimate():
    """Several files (CLI, Dask): the estimate's passes fill a small share of a file's progress and
    its blocks the rest, so the bar does not reach the file's end and jump back."""
    from napari_unet.inference.distributed import _FileShare
    from napari_unet.inference.large import BlockProgress

    share = _FileShare()
    events = ([BlockProgress(i, 6, stage="estimate") for i in range(1, 7)]
              + [BlockProgress(0, 10, stage="start")] + [BlockProgress(i, 10, stage="predict") for i in range(1, 11)])
    fractions = [share(e) for e in events]
    assert fractions == sorted(fractions) and fractions[5] <= 0.05 and fractions[-1] == pytest.approx(1.0)
    plain = _FileShare()  # no estimate (the size given): the blocks are the whole file
    assert plain(BlockProgress(5, 10, stage="predict")) == pytest.approx(0.5)
