"""Bad input everywhere, Python API: a table of cases, one id per case.

Every refused input raises ``ValueError`` (``ModelFileError`` is one) whose message names the
problem AND what to do; every accepted odd input gives a result of the right shape, finite, with
a warning where the result may surprise. The caller's array is never modified.
``pytest --collect-only -q tests/core/test_bad_input.py`` lists the cases.
"""

from __future__ import annotations

import copy
import json
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch

from napari_unet import metrics
from napari_unet.inference.inputs import fit_normalizer
from napari_unet.inference.predictor import Predictor, predict, run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.modelfile import ModelFileError, load_model, make_config, save_model
from napari_unet.models import build_model
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.training import train_iter
from napari_unet.training.patches import check_training_labels, prepare_image as prepare_training_image
from _helpers import params as _params  # noqa: E402

PERCENTILE = {"kind": "percentile", "low": 1.0, "high": 99.8}


@pytest.fixture(scope="module")
def models(make_random_model):
    """Small random-weight models: 1-channel 2D, 2-channel 2D, 1-channel 3D."""
    return {
        "grey": load_model(make_random_model("bad-grey")),
        "two-channel": load_model(make_random_model("bad-two", in_channels=2)),
        "3d": load_model(make_random_model("bad-3d", spatial_dims=3, features=(4, 8))),
    }


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind in "fc")


# -- prediction: images the model cannot take --------------------------------------------------
# (id, model, image factory, keyword arguments, regex the message must match: problem ... fix)
REFUSED_IMAGES = [
    ("1d-signal", "grey", lambda: np.zeros(64), {}, r"1 dimension \(shape \(64,\)\).*at least 2 axes.*give a 2D array"),
    ("0d-scalar", "grey", lambda: np.array(3.0), {}, r"0 dimensions.*give a 2D array"),
    ("5d-tczyx", "grey", lambda: np.zeros((1, 2, 3, 16, 16)), {},
     r"5 axes besides channels \(shape \(1, 2, 3, 16, 16\)\).*Slice the data.*image\[0\]"),
    ("rgb-without-channel-axis", "grey", lambda: np.zeros((64, 64, 3), np.uint8), {},
     r"looks like a colour image.*3 values.*channel_axis=.*--channel-axis.*rgb=True"),
    ("rgba-without-channel-axis", "grey", lambda: np.zeros((64, 64, 4), np.uint8), {},
     r"looks like a colour image.*4 values"),
    ("rgb-flag-on-5-values", "grey", lambda: np.zeros((32, 32, 5), np.uint8), {"rgb": True},
     r"3 \(RGB\) or 4 \(RGBA\).*has 5.*rgb=False.*channel axis"),
    ("rgb-flag-on-2d", "grey", lambda: np.zeros((32, 32), np.uint8), {"rgb": True},
     r"RGB image needs 3.*no colour axis.*rgb=False"),
    ("two-channels-one-channel-model", "grey", lambda: np.zeros((2, 32, 32)), {"channel_axis": 0},
     r"needs 1 input channel\(s\) but the image has 2 on axis 0.*choose a model trained on 2-channel"),
    ("five-channels-one-channel-model", "grey", lambda: np.zeros((32, 32, 5)), {"channel_axis": -1},
     r"has 5 on axis 2.*choose a model"),
    ("channel-axis-out-of-range", "grey", lambda: np.zeros((32, 32)), {"channel_axis": 3},
     r"Channel axis 3 does not exist.*2 axes.*choose an axis from -2 to 1, or none"),
    ("channel-axis-not-an-int", "grey", lambda: np.zeros((32, 32)), {"channel_axis": 1.5},
     r"must be an axis number.*give an integer"),
    ("channel-axis-leaves-1d", "grey", lambda: np.zeros((3, 32)), {"channel_axis": 0},
     r"needs 2 image axes besides the channel axis.*choose no channel axis"),
    ("complex", "grey", lambda: np.zeros((32, 32), complex), {}, r"complex128.*cannot be segmented.*np\.abs"),
    ("text", "grey", lambda: np.full((8, 8), "a"), {}, r"<U1.*convert it to a numeric array"),
    ("python-objects", "grey", lambda: np.empty((8, 8), object), {}, r"object.*convert it to a numeric array"),
    ("datetime", "grey", lambda: np.zeros((8, 8), "M8[s]"), {}, r"datetime64.*times or dates.*convert"),
    ("ragged-nested-list", "grey", lambda: [[1, 2], [3]], {},
     r"not a regular array \(its rows differ in length\).*numpy or dask"),
    ("empty-0-rows", "grey", lambda: np.zeros((0, 64)), {}, r"empty \(shape \(0, 64\)\).*no pixels.*choose an image"),
    ("empty-stack", "grey", lambda: np.zeros((0, 16, 16), np.uint8), {}, r"empty.*choose an image with data"),
    ("2d-image-3d-model", "3d", lambda: np.zeros((32, 32)), {}, r"3D model needs at least 3 axes.*choose a 2D model"),
    ("4d-image-3d-model", "3d", lambda: np.zeros((2, 4, 16, 16)), {}, r"4 axes besides channels.*3D volumes.*Slice"),
    ("grey-image-two-channel-model", "two-channel", lambda: np.zeros((32, 32)), {},
     r"needs 2 channels but the image has none marked: mark an axis with 2 values as the channel axis"),
    ("three-channels-two-channel-model", "two-channel", lambda: np.zeros((3, 32, 32)), {"channel_axis": 0},
     r"needs 2 input channel\(s\) but the image has 3.*3-channel"),
]


@pytest.mark.parametrize("model,make,kwargs,message", _params(REFUSED_IMAGES))
def test_refused_images_name_the_problem_and_the_fix(models, model, make, kwargs, message):
    image = make()
    before = copy.deepcopy(image)
    with pytest.raises(ValueError, match=message):
        predict(models[model], image, device="cpu", **kwargs)
    assert _same(image, before) if isinstance(image, np.ndarray) else image == before


# -- prediction: odd images that are segmented, with a warning where needed ---------------------
# (id, image factory, kwargs, expected labels shape, warning regex or None)
ACCEPTED_IMAGES = [
    ("rgb-flag", lambda: np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8), {"rgb": True}, (40, 48),
     "converted to grey"),
    ("rgba-flag", lambda: np.random.default_rng(0).integers(0, 255, (40, 48, 4), np.uint8), {"rgb": True}, (40, 48),
     "alpha channel"),
    ("three-channels-first", lambda: np.random.default_rng(0).random((3, 40, 48)), {"channel_axis": 0}, (40, 48),
     "converted to grey"),
    ("some-nan", lambda: np.where(np.eye(48, dtype=bool), np.nan, np.random.default_rng(1).random((48, 48))), {},
     (48, 48), "NaN or infinite"),
    ("all-nan", lambda: np.full((32, 32), np.nan, np.float32), {}, (32, 32), "no finite values"),
    ("plus-minus-inf", lambda: np.where(np.eye(32, dtype=bool), np.inf, -np.inf), {}, (32, 32), "no finite values"),
    ("constant", lambda: np.full((32, 32), 7, np.uint16), {}, (32, 32), "constant"),
    ("all-zero", lambda: np.zeros((32, 32), np.uint8), {}, (32, 32), "constant"),
    ("1x1", lambda: np.ones((1, 1)), {}, (1, 1), "constant"),
    ("thin-1-row", lambda: np.random.default_rng(2).random((1, 200)), {}, (1, 200), None),
    ("thin-2-columns", lambda: np.random.default_rng(2).random((150, 2)), {}, (150, 2), None),
    ("thin-stack-of-1x5", lambda: np.random.default_rng(2).random((3, 1, 5)), {}, (3, 1, 5), None),
    ("uint64-near-2**63", lambda: (np.uint64(2**63) + np.arange(32 * 32, dtype=np.uint64) * np.uint64(2**40))
     .reshape(32, 32), {}, (32, 32), None),
    ("uint64-constant-2**63", lambda: np.full((32, 32), 2**63 + 1, np.uint64), {}, (32, 32), "constant"),
    ("float64-plus-minus-1e308", lambda: np.where(np.arange(32)[None, :] < 16, -1.7e308, 1.7e308) * np.ones((32, 1)),
     {}, (32, 32), None),
    ("negative-int8", lambda: np.random.default_rng(3).integers(-128, 127, (32, 32)).astype(np.int8), {}, (32, 32),
     None),
    ("nested-list", lambda: [[0.0, 1.0, 2.0]] * 3, {}, (3, 3), None),
]


@pytest.mark.parametrize("make,kwargs,shape,warning", _params(ACCEPTED_IMAGES))
def test_odd_images_are_segmented_with_a_warning(models, make, kwargs, shape, warning, one_thread):
    image = make()
    before = copy.deepcopy(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value in divide" leaks out either
        seg = run_to_end(segment_iter(models["grey"], image, device="cpu", **kwargs))
    assert seg.labels.shape == shape and seg.labels.dtype == np.int32
    probs = seg.prediction.probabilities
    assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    if warning is None:
        assert not any("constant" in w or "NaN" in w for w in seg.prediction.warnings), seg.prediction.warnings
    else:
        assert any(warning in w for w in seg.prediction.warnings), seg.prediction.warnings
    assert _same(image, before) if isinstance(image, np.ndarray) else image == before


ALL_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
              np.float16, np.float32, np.float64, np.longdouble]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=[np.dtype(t).name for t in ALL_DTYPES])
def test_every_dtype_over_its_whole_range(models, dtype, one_thread):
    """Values from the type's minimum to its maximum (floats: to +-max/2 and a NaN) are normalised
    without overflow: the result is finite and not mistaken for a constant image."""
    dtype = np.dtype(dtype)
    if dtype == bool:
        image = np.indices((40, 40)).sum(0) % 2 == 0
    elif dtype.kind in "iu":
        lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        image = np.array([lo + (hi - lo) * k // 1599 for k in range(1600)], dtype=dtype).reshape(40, 40)
    else:
        half = np.finfo(dtype).max / dtype.type(2)
        image = (np.linspace(-1, 1, 40 * 40).astype(dtype) * half).reshape(40, 40)
        image[0, 0] = np.nan
    before = image.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = predict(models["grey"], image, device="cpu")
    assert out.probabilities.shape == (1, 40, 40) and np.isfinite(out.probabilities).all()
    assert not any("constant" in w for w in out.warnings)
    assert _same(image, before)
    normalized = fit_normalizer(image[None], PERCENTILE)(image[None])
    assert normalized.dtype == np.float32 and np.isfinite(normalized).all()
    assert normalized.max() - normalized.min() > 0.5  # the full range is spread, not collapsed


def test_dask_and_memory_mapped_images(models, tmp_path, one_thread):
    da = pytest.importorskip("dask.array")
    image = np.random.default_rng(4).random((2, 48, 40)).astype(np.float32)
    expected = predict(models["grey"], image, device="cpu").probabilities
    lazy = da.from_array(image, chunks=(1, 24, 20))
    assert np.allclose(predict(models["grey"], lazy, device="cpu").probabilities, expected, atol=1e-6)
    path = tmp_path / "image.npy"
    np.save(path, image)
    mapped = np.load(path, mmap_mode="r")
    assert np.allclose(predict(models["grey"], mapped, device="cpu").probabilities, expected, atol=1e-6)
    assert np.array_equal(np.load(path), image)  # the file is untouched
    # refused lazily: a 5D dask array is explained without computing anything
    calls = []
    bad = da.zeros((1, 1, 2, 16, 16), chunks=8).map_blocks(lambda b: calls.append(1) or b, dtype=float)
    calls.clear()  # dask may call the function once on a dummy block while building the graph
    with pytest.raises(ValueError, match="Slice the data"):
        predict(models["grey"], bad, device="cpu")
    assert not calls


# -- Predictor settings ----------------------------------------------------------------------
PREDICTOR_SETTINGS = [
    ("tile-size-too-small", {"tile_size": 8}, r"tile_size must be at least 16"),
    ("negative-halo", {"halo": -1}, r"halo and blend cannot be negative"),
    ("unknown-device", {"device": "tpu"}, r"tpu"),
    ("tile-size-not-a-number", {"tile_size": "big"}, r"tile_size.*auto.*'big'"),
    ("tile-size-within-twice-the-halo", {"tile_size": 64}, r"tile_size.*halo"),  # else 2-px tile cores
    ("batch-size-zero", {"batch_size": 0}, r"batch_size.*at least 1"),
]


@pytest.mark.parametrize("kwargs,message", _params(PREDICTOR_SETTINGS))
def test_bad_predictor_settings(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor = Predictor(models["grey"], **{"device": "cpu", **kwargs})
        predict(models["grey"], np.zeros((16, 16)), predictor=predictor)


# -- model files ------------------------------------------------------------------------------
def _small_model_file(tmp_path, name="m"):
    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    return save_model(tmp_path / name, net, make_config(net, "unet")), net


def _rewrite(path, change_header=None, change_data=None):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), bytearray(data[8 + n:])
    if change_header:
        change_header(header)
    if change_data:
        change_data(header, body)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))


def _config_change(change):
    def apply(header):
        config = json.loads(header["__metadata__"]["napari_unet"])
        header["__metadata__"]["napari_unet"] = json.dumps(change(config))
    return apply


def _nan_weights(header, body):
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start, end = header[name]["data_offsets"]
    body[start:end] = np.full((end - start) // 4, np.nan, np.float32).tobytes()


def _keras_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF")


def _plain_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/readme.txt", "hi")


def _safetensors_with_header_of(path, n_bytes):
    """A valid safetensors file (no tensors) whose first bytes, the header length, read like a pickle opcode."""
    header = json.dumps({"__metadata__": {"tool": "other"}}).encode()
    path.write_bytes(struct.pack("<Q", n_bytes) + header + b" " * (n_bytes - len(header)))


MODEL_FILES = [
    ("safetensors-header-of-640-bytes", lambda p, m: _safetensors_with_header_of(p, 0x0280),
     r"safetensors file from another tool"),  # starts with b"\x80\x02": not to be called a pickle
    ("keras-archive", lambda p, m: _keras_zip(p), r"Keras model.*napari-unet model"),
    ("zip-of-other-files", lambda p, m: _plain_zip(p), r"zip archive.*unpack it"),
    ("pickle-protocol-5", lambda p, m: p.write_bytes(pickle.dumps({"w": [1.0]}, protocol=5)),
     r"Python pickle.*never unpickles.*save_model"),
    ("numpy-npy", lambda p, m: np.save(open(p, "wb"), np.zeros(3)), r"NumPy array file.*choose a \.safetensors"),
    ("json-config-alone", lambda p, m: p.write_text('{"format": "napari-unet"}'), r"JSON.*choose the \.safetensors"),
    ("onnx-protobuf", lambda p, m: p.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x052.0.0" + b"\0" * 64),
     r"not a safetensors file"),
    ("truncated-header", lambda p, m: p.write_bytes(m.read_bytes()[:40]),
     r"not a safetensors file \(or it is truncated\)"),
    ("config-not-an-object", lambda p, m: (p.write_bytes(m.read_bytes()),
                                           _rewrite(p, _config_change(lambda c: [c])))[0],
     r"model\.safetensors: Invalid napari-unet model config: it is not a JSON object; .*use the original"),
    ("config-without-input", lambda p, m: (p.write_bytes(m.read_bytes()),
                                           _rewrite(p, _config_change(lambda c: {k: v for k, v in c.items()
                                                                                  if k != "input"})))[0],
     r"input\.channels' must be a positive integer; .*use the original model file"),
    ("config-corrupt-json", lambda p, m: (p.write_bytes(m.read_bytes()), _rewrite(
        p, lambda h: h["__metadata__"].update(napari_unet="{broken")))[0],
     r"corrupt config \(.*\): .*use the original"),
    ("arguments-break-the-builder", lambda p, m: (p.write_bytes(m.read_bytes()), _rewrite(
        p, _config_change(lambda c: {**c, "arguments": {**c["arguments"], "features": []}})))[0],
     r"do not build a network.*original file"),
    ("nan-weights", lambda p, m: (p.write_bytes(m.read_bytes()), _rewrite(p, change_data=_nan_weights))[0],
     r"NaN or infinite.*another model or train it again"),
]


@pytest.mark.parametrize("write,message", _params(MODEL_FILES))
def test_unusable_model_files_name_the_problem_and_the_fix(tmp_path, write, message):
    good, _ = _small_model_file(tmp_path)
    path = tmp_path / "model.safetensors"
    write(path, good)
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match=message):
        load_model(path)
    with pytest.raises(ModelFileError, match=message):
        Predictor(path, device="cpu")
    assert path.read_bytes() == before  # never "repaired" in place


# -- training: labels and images that do not fit ---------------------------------------------
@pytest.fixture(scope="module")
def nuclei():
    image, labels = fluorescent_nuclei(shape=(64, 64), n_nuclei=5, seed=0)
    return image, labels.astype(np.int32)


def _train(pairs, val=(), net=None, **kwargs):
    net = net or build_model("unet", features=(4, 8))
    kwargs = {"patch_size": 32, "epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "device": "cpu", **kwargs}
    return run_to_end(train_iter(net, pairs, val, **kwargs))


# (id, pair factory from (image, labels), regex)
REFUSED_TRAINING = [
    ("labels-fractional", lambda im, lab: (im, lab * 0.5), r"fractional values.*threshold and label them"),
    ("labels-nan", lambda im, lab: (im, np.where(lab > 0, np.nan, 0.0)), r"NaN or infinite.*fill the gaps with 0"),
    ("labels-negative", lambda im, lab: (im, -lab), r"negative ids \(smallest -\d+\).*use 0 for background"),
    ("labels-text", lambda im, lab: (im, lab.astype(str)), r"must be integer object ids.*convert them"),
    ("labels-1d", lambda im, lab: (im.ravel(), lab.ravel()), r"labels \(H, W\).*shape \(4096,\)"),
    ("labels-other-shape", lambda im, lab: (im, lab[:32]), r"do not match the image's size \(64, 64\).*own height"),
    ("image-complex", lambda im, lab: (im.astype(complex), lab), r"complex128.*np\.abs"),
    ("image-5d", lambda im, lab: (im[None, None, None], lab), r"must be \(H, W\) or \(C, H, W\).*slice the data"),
]


@pytest.mark.parametrize("make_pair,message", _params(REFUSED_TRAINING))
def test_refused_training_pairs(nuclei, make_pair, message):
    image, labels = make_pair(*nuclei)
    before = (copy.deepcopy(image), copy.deepcopy(labels))
    net = build_model("unet", features=(4, 8))
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=message):
        _train([(image, labels)], net=net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # not one step taken
    assert _same(image, before[0]) and _same(labels, before[1])


ACCEPTED_LABELS = [
    ("labels-whole-floats", lambda lab: lab.astype(np.float32)),
    ("labels-bool", lambda lab: lab > 0),
    ("labels-uint64-above-2**63", lambda lab: np.where(lab > 0, lab.astype(np.uint64) + np.uint64(2**63), 0)),
    ("labels-empty", lambda lab: np.zeros_like(lab)),
]


@pytest.mark.parametrize("make_labels", _params(ACCEPTED_LABELS))
def test_accepted_training_labels_keep_the_objects_apart(nuclei, make_labels, one_thread):
    image, labels = nuclei
    odd = make_labels(labels)
    checked = check_training_labels(odd)
    assert checked.shape == labels.shape and checked.dtype.kind in "iu" and checked.min() >= 0
    # the same partition into objects: equal ids stay equal, different ids stay different, 0 stays 0
    flat_in, flat_out = np.asarray(odd).ravel(), checked.ravel()
    assert np.array_equal(flat_in == 0, flat_out == 0)
    assert len(np.unique(flat_in)) == len(np.unique(flat_out))
    assert _train([(image, odd)]).steps == 1


def test_colour_last_training_images_become_grey_for_a_one_channel_model(nuclei):
    image, labels = nuclei
    rgb = np.stack([image] * 3, axis=-1)
    prepared = prepare_training_image(rgb, labels, PERCENTILE, in_channels=1)
    grey = prepare_training_image(image, labels, PERCENTILE)
    assert prepared.image.shape == (1, 64, 64)
    assert np.allclose(prepared.image, grey.image, atol=1e-5)
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\) but the training image has 2.*choose a base model"):
        prepare_training_image(np.stack([image] * 2), labels, PERCENTILE, in_channels=1)


def test_train_iter_on_colour_images_with_a_one_channel_model(nuclei):
    image, labels = nuclei
    assert _train([(np.stack([image] * 3, axis=-1), labels)]).steps == 1


def test_train_iter_on_two_channel_images_with_a_one_channel_model(nuclei):
    image, labels = nuclei
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\).*has 2.*choose a base model"):
        _train([(np.stack([image] * 2), labels)])


def test_validation_pair_of_another_shape_is_refused_before_training(nuclei):
    image, labels = nuclei
    with pytest.raises(ValueError, match=r"validation.*do not match"):
        next(train_iter(build_model("unet", features=(4, 8)), [(image, labels)], [(image, labels[:32])],
                        patch_size=32, epochs=1, steps_per_epoch=1, batch_size=2, device="cpu"))


# -- fine-tuning (the engine behind the Fine-tune widget) --------------------------------------
def _finetune(base, triples, out_dir, validate=True, **kwargs):
    from napari_unet.finetune import FinetuneSettings, finetune_iter

    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=1, batch_size=2, patch_size=32, device="cpu",
                                validate=validate)
    return run_to_end(finetune_iter(base, triples, settings, out_dir=out_dir, **kwargs))


def _file_under_a_file(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a-file").write_text("mine")
    return tmp_path / "a-file" / "models"


# (id, base model factory, triples factory, out_dir factory, regex)
REFUSED_FINETUNING = [
    ("no-triples", lambda f: f("ft-base"), lambda im, lab: [], lambda t: t, r"training set is empty.*add it first"),
    ("nothing-reviewed", lambda f: f("ft-base"), lambda im, lab: [(im, lab, np.zeros(lab.shape, bool))], lambda t: t,
     r"Nothing is marked as reviewed.*mark the regions"),
    ("reviewed-other-shape", lambda f: f("ft-base"), lambda im, lab: [(im, lab, np.ones((8, 8), bool))], lambda t: t,
     r"reviewed region.*does not match"),
    ("negative-ids", lambda f: f("ft-base"), lambda im, lab: [(im, -lab, None)], lambda t: t, r"negative ids.*use 0"),
    ("labels-other-shape", lambda f: f("ft-base"), lambda im, lab: [(im, lab[:, :40], None)], lambda t: t,
     r"do not match the image's size"),
    ("unwritable-model-folder", lambda f: f("ft-base"), lambda im, lab: [(im, lab, None)], _file_under_a_file,
     r"Cannot write models to .*NAPARI_UNET_MODEL_DIR"),
    ("corrupt-base-model", lambda f: (lambda p: (p.write_bytes(p.read_bytes()[:100]), p)[1])(f("ft-cut")),
     lambda im, lab: [(im, lab, None)], lambda t: t, r"truncated|corrupt"),
    ("2d-labels-3d-model", lambda f: f("ft-3d", spatial_dims=3, features=(4, 8)),
     lambda im, lab: [(im, lab, None)], lambda t: t, r"2 dimensions.*3D model.*choose a 2D"),
]


@pytest.mark.parametrize("base,make_triples,out_dir,message", _params(REFUSED_FINETUNING))
def test_refused_finetuning_saves_nothing(make_random_model, nuclei, tmp_path, base, make_triples, out_dir, message):
    folder = out_dir(tmp_path / "out")
    base_path = base(lambda name, **kw: make_random_model(name, features=kw.pop("features", (4, 8)), **kw))
    base_bytes = base_path.read_bytes()
    with pytest.raises(ValueError, match=message):
        _finetune(str(base_path), make_triples(*nuclei), folder, name="refused")
    assert not list(tmp_path.rglob("refused*"))  # no model, no temporary file
    assert base_path.read_bytes() == base_bytes  # the base model is never touched


def test_finetuning_on_a_nan_image_keeps_finite_weights(make_random_model, nuclei, tmp_path, one_thread):
    image, labels = nuclei
    odd = image.astype(np.float32)
    odd[:8] = np.nan
    # one 64 px image: nothing to hold out, so trained unchecked (validation off)
    result = _finetune(str(make_random_model("ft-nan", features=(4, 8))), [(odd, labels, None)], tmp_path,
                       validate=False, name="nan-image")
    assert result.path is not None and result.path.exists()
    assert all(torch.isfinite(v).all() for v in load_model(result.path).net.state_dict().values()
               if v.is_floating_point())


# -- metrics ----------------------------------------------------------------------------------
GT = np.zeros((16, 16), np.int32)
GT[2:6, 2:6], GT[8:14, 8:14] = 1, 2

REFUSED_METRICS = [
    ("labels-whole-floats", lambda: (GT.astype(float), GT), r"integers, got float64.*astype\(int\)"),
    ("labels-fractional", lambda: (GT * 0.5, GT), r"integers, got float64.*threshold and label"),
    ("labels-nan", lambda: (np.where(GT > 0, np.nan, 0), GT), r"integers.*threshold and label"),
    ("labels-negative", lambda: (GT, -GT), r"negative values \(found -2.*number the objects"),
    ("labels-text", lambda: (GT.astype(str), GT), r"integers, got <U.*convert them to integer"),
    ("shapes-differ", lambda: (GT, GT[:8]), r"differ in shape.*\(16, 16\).*\(8, 16\).*same image"),
    ("2d-vs-3d", lambda: (GT, GT[None]), r"differ in shape.*same image"),
]


@pytest.mark.parametrize("make,message", _params(REFUSED_METRICS))
def test_refused_metric_inputs(make, message):
    gt, pred = make()
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(gt, pred)


def test_metric_edge_cases_give_exact_scores():
    huge = np.where(GT > 0, GT.astype(np.uint64) + np.uint64(2**63), np.uint64(0))
    assert metrics.evaluate(huge, GT)["ap50"] == 1.0  # uint64 ids above 2**63 are still two objects
    pairs = metrics.match_instances(huge, GT).pairs
    assert pairs.dtype == np.uint64 and sorted(pairs[:, 0].tolist()) == [2**63 + 1, 2**63 + 2]  # not wrapped
    no_background = np.full((4, 4), 2**63 + 5, np.uint64)  # ids near 2**64 must not pass through float64
    assert metrics.match_instances(no_background, no_background).pairs.tolist() == [[2**63 + 5, 2**63 + 5]]
    assert metrics.evaluate(GT > 0, GT)["n_true"] == 1  # a bool mask is one object
    assert metrics.evaluate(GT[:0], GT[:0])["ap50"] == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\].*0\.5"):
        metrics.match_instances(GT, GT, float("nan"))
