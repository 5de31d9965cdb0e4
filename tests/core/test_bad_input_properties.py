"""Bad input everywhere, as properties: for ANY image, label array or damaged model file the
Python API either gives a valid result or raises ``ValueError`` with a message; never another
exception type, never a modified input.

Examples are derandomised (the same ones every run, so a failure is reproducible); set
``NAPARI_UNET_HYPOTHESIS_EXAMPLES`` to explore more of them locally.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from napari_unet import metrics  # noqa: E402
from napari_unet.inference.inputs import fit_normalizer  # noqa: E402
from napari_unet.inference.predictor import predict  # noqa: E402
from napari_unet.modelfile import ModelFileError, load_model, make_config, save_model  # noqa: E402
from napari_unet.models import build_model  # noqa: E402
from napari_unet.training.patches import check_training_labels  # noqa: E402

EXAMPLES = int(os.environ.get("NAPARI_UNET_HYPOTHESIS_EXAMPLES", "25"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    derandomize="NAPARI_UNET_HYPOTHESIS_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

NUMERIC = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
           np.float16, np.float32, np.float64]
NOT_NUMERIC = [np.complex64, np.dtype("M8[s]"), np.dtype("m8[ms]"), np.dtype("U2")]


#: A message must say what to do: one of these verbs (checked case-insensitively).
FIX_WORDS = ("choose", "give", "slice", "mark", "convert", "take", "use ", "pass", "untick", "threshold", "fill",
             "save", "load", "train", "compare", "number", "unpack", "open", "correct", "relabel", "reshape")


def says_what_to_do(message: str) -> bool:
    return len(message) > 30 and any(word in message.lower() for word in FIX_WORDS)


def unchanged(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def shapes(max_dims=5, max_side=24, min_side=0):
    return hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=min_side, max_side=max_side).filter(
        lambda s: int(np.prod(s)) <= 3000)


def arrays(dtypes, shape_strategy):
    return st.sampled_from(dtypes).flatmap(lambda dt: hnp.arrays(np.dtype(dt), shape_strategy))


@pytest.fixture(scope="module")
def grey_model():
    import torch

    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    from napari_unet.modelfile import LoadedModel

    return LoadedModel(net.eval(), make_config(net, "unet"), name="property")


def _expected_shape(shape, channel_axis, rgb):
    """The labels' shape for an image the 2D model accepts: the channel axis removed."""
    shape = list(shape)
    if rgb:
        channel_axis = -1
    if channel_axis is not None:
        del shape[channel_axis]
    return tuple(shape)


# mostly plausible images (2 or 3 axes, numeric) so that about half the examples are predicted
IMAGES = st.one_of(*[arrays(NUMERIC, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=24))] * 3,
                   arrays(NUMERIC, shapes()), arrays(NOT_NUMERIC, shapes(max_dims=3, max_side=6)))


@PROPERTY
@given(image=IMAGES, channel_axis=st.one_of(st.none(), st.none(), st.none(), st.integers(-6, 5)),
       rgb=st.sampled_from([False, False, False, True]))
def test_any_image_is_predicted_or_refused_with_a_message(grey_model, one_thread, image, channel_axis, rgb):
    before = image.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # overflow / invalid-value warnings are bugs too
            out = predict(grey_model, image, channel_axis=channel_axis, rgb=rgb, device="cpu", tile_size=128)
    except ValueError as exc:
        assert says_what_to_do(str(exc)), str(exc)
    else:
        labels_shape = _expected_shape(image.shape, channel_axis, rgb)
        probs = out.probabilities
        assert probs.shape == labels_shape[:-2] + (1,) + labels_shape[-2:]
        assert probs.dtype == np.float32 and np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert unchanged(image, before)


@PROPERTY
@given(image=arrays(NUMERIC + [np.longdouble], shapes(max_dims=3, min_side=1)))
def test_normalisation_of_any_values_is_finite_float32(image):
    before = image.copy()
    plane = image.reshape((1,) + image.shape) if image.ndim else image.reshape(1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = fit_normalizer(plane, {"kind": "percentile", "low": 1.0, "high": 99.8}, [])(plane)
    assert out.dtype == np.float32 and out.shape == plane.shape and np.isfinite(out).all()
    assert unchanged(image, before)


LABEL_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                np.float32, np.float64, np.dtype("U2")]


@PROPERTY
@given(labels=arrays(LABEL_DTYPES, shapes(max_dims=3, max_side=16)))
def test_any_label_array_is_checked_or_refused_with_a_message(labels):
    before = labels.copy()
    try:
        checked = check_training_labels(labels)
    except ValueError as exc:
        assert says_what_to_do(str(exc)), str(exc)
    else:
        assert checked.shape == labels.shape and checked.dtype.kind in "iu"
        assert checked.size == 0 or checked.min() >= 0
        flat_in, flat_out = labels.ravel(), checked.ravel()
        assert np.array_equal(flat_in == 0, flat_out == 0)  # background stays background
        # the same objects: one output id per input id
        pairs = {(a, b) for a, b in zip(flat_in.tolist(), flat_out.tolist())}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert unchanged(labels, before)


@PROPERTY
@given(data=st.data(), dtype_a=st.sampled_from(LABEL_DTYPES[:-1]), dtype_b=st.sampled_from(LABEL_DTYPES[:-1]),
       same_shape=st.booleans())
def test_any_pair_of_label_arrays_is_scored_or_refused(data, dtype_a, dtype_b, same_shape):
    shape = data.draw(shapes(max_dims=3, max_side=12), label="shape")
    gt = data.draw(hnp.arrays(np.dtype(dtype_a), shape), label="gt")
    other = shape if same_shape else data.draw(shapes(max_dims=3, max_side=12), label="other shape")
    pred = data.draw(hnp.arrays(np.dtype(dtype_b), other), label="pred")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            scores = metrics.evaluate(gt, pred)
    except ValueError as exc:
        assert says_what_to_do(str(exc)), str(exc)
    else:
        for key in ("ap50", "ap75", "ap50_95", "f1", "precision", "recall", "mean_iou", "dice", "foreground_iou"):
            assert 0.0 <= scores[key] <= 1.0, (key, scores[key])
        assert scores["tp"] + scores["fn"] == scores["n_true"] and scores["tp"] + scores["fp"] == scores["n_pred"]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    path = save_model(tmp_path_factory.mktemp("good") / "good", net, make_config(net, "unet"))
    return path.read_bytes()


@PROPERTY
@given(data=st.data())
def test_any_damaged_model_file_loads_or_is_refused_with_a_message(model_bytes, tmp_path_factory, data):
    raw = bytearray(model_bytes)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    how = data.draw(st.sampled_from(["truncate", "overwrite header", "overwrite anywhere", "append"]), label="how")
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64), label="tail")
    else:
        end = header_end if how == "overwrite header" else len(raw)
        for _ in range(data.draw(st.integers(1, 8), label="n")):
            at = data.draw(st.integers(0, end - 1), label="at")
            raw[at] = data.draw(st.integers(0, 255), label="byte")
    assume(bytes(raw) != model_bytes)
    path = tmp_path_factory.mktemp("damaged") / "m.safetensors"
    path.write_bytes(bytes(raw))
    try:
        loaded = load_model(path)
    except ModelFileError as exc:
        assert len(str(exc)) > 20, str(exc)
    else:
        import torch

        assert all(torch.isfinite(v).all() for v in loaded.net.state_dict().values() if v.is_floating_point())
    assert path.read_bytes() == bytes(raw)
