"""Bad input everywhere, in a real viewer: the Segment and Fine-tune widgets driven as a user
would (add the layer, choose it, click Run / Train, wait). A refused input shows a napari error
notification and a status line naming the problem and the fix, changes no layer, no layer's data
and no file, and the next good run works; an odd but usable input is segmented, with a warning
notification where the result may surprise. ``pytest --collect-only -q`` lists the cases.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from napari_unet.catalog import user_model_dir, user_models


from _helpers import params as _params  # noqa: E402


@pytest.fixture
def notes():
    """The napari notifications shown from now on, as ``[(severity, message)]``."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    return lambda: [(str(n.severity).lower(), str(n.message)) for n in notification_manager.records[start:]]


@pytest.fixture
def installed(make_random_model):
    """Small random models in the user's model folder (so the widgets list them)."""
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(make_random_model("tiny"), folder / "tiny.safetensors")
    shutil.copy(make_random_model("two-channel", in_channels=2), folder / "two-channel.safetensors")
    yield folder
    for name in ("tiny", "two-channel", "broken"):
        (folder / f"{name}.safetensors").unlink(missing_ok=True)


def _layers(viewer):
    """Names and copies of every layer's data."""
    return [(layer.name, np.array(layer.data[0] if getattr(layer, "multiscale", False) else layer.data, copy=True))
            for layer in viewer.layers]


def _unchanged(viewer, before) -> bool:
    now = _layers(viewer)
    return [n for n, _ in now] == [n for n, _ in before] and all(
        a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        for (_, a), (_, b) in zip(now, before))


def _memmap(tmp_path):
    path = tmp_path / "mapped.npy"
    np.save(path, np.random.default_rng(5).random((48, 40)).astype(np.float32))
    return np.load(path, mmap_mode="r")


def _dask():
    da = pytest.importorskip("dask.array")
    return da.from_array(np.random.default_rng(6).random((2, 48, 40)).astype(np.float32), chunks=(1, 24, 20))


def _truncated_model(widget, folder, make_random_model):
    good = make_random_model("tiny").read_bytes()
    (folder / "broken.safetensors").write_bytes(good[: len(good) // 3])
    widget.refresh_models()
    return "broken"


def _deleted_model(widget, tmp_path, make_random_model):
    path = tmp_path / "moved.safetensors"
    shutil.copy(make_random_model("tiny"), path)
    widget.add_model_file(str(path))
    path.unlink()  # the user moves the file away after loading it
    return str(path)


# -- Segment widget: refused ------------------------------------------------------------------
# (id, add_layer(viewer, tmp_path), channel axis choice, model(widget, folder, tmp_path, make_random_model), regex)
REFUSED_SEGMENT = [
    ("5d-layer", lambda v, t: v.add_image(np.zeros((1, 2, 3, 16, 16), np.float32), name="bad"), None,
     lambda w, f, t, m: "tiny", r"5 axes besides channels.*Slice the data.*Channel axis"),
    ("rgb-layer-marked-not-rgb", lambda v, t: v.add_image(np.zeros((64, 64, 3), np.uint8), name="bad", rgb=False),
     None, lambda w, f, t, m: "tiny", r"looks like a colour image.*'Channel axis'"),
    ("two-channel-layer-one-channel-model", lambda v, t: v.add_image(np.zeros((2, 48, 48), np.float32), name="bad"),
     0, lambda w, f, t, m: "tiny", r"needs 1 input channel\(s\) but the image has 2 on axis 0.*choose"),
    ("channel-axis-on-a-2d-image", lambda v, t: v.add_image(np.zeros((48, 48), np.float32), name="bad"), 0,
     lambda w, f, t, m: "tiny", r"needs 2 image axes besides the channel axis.*choose no channel axis"),
    ("2d-image-3d-model", lambda v, t: v.add_image(np.zeros((48, 48), np.float32), name="bad"), None,
     lambda w, f, t, m: "unet-3d", r"3D model needs at least 3 axes.*choose a 2D model"),
    ("grey-image-two-channel-model", lambda v, t: v.add_image(np.zeros((48, 48), np.float32), name="bad"), None,
     lambda w, f, t, m: "two-channel", r"needs 2 channels but the image has none marked.*Channel axis"),
    ("truncated-model-in-the-model-folder", lambda v, t: v.add_image(np.zeros((48, 48), np.float32), name="bad"),
     None, lambda w, f, t, m: _truncated_model(w, f, m), r"broken\.safetensors.*(truncated|corrupt)"),
    ("model-file-deleted-after-loading", lambda v, t: v.add_image(np.zeros((48, 48), np.float32), name="bad"), None,
     lambda w, f, t, m: _deleted_model(w, t, m), r"is gone.*load it again"),
]


@pytest.mark.parametrize("add_layer,channel,model,message", _params(REFUSED_SEGMENT))
def test_segment_refuses_with_a_notification_and_changes_nothing(installed, segment_widget, run_and_wait, notes,
                                                                 tmp_path, make_random_model, one_thread, add_layer,
                                                                 channel, model, message):
    viewer, widget = segment_widget
    widget.refresh_models()
    layer = add_layer(viewer, tmp_path)
    widget.image.value = layer
    widget.channels.value = channel
    widget.model.value = model(widget, installed, tmp_path, make_random_model)
    before = _layers(viewer)
    run_and_wait(widget)
    assert re.search(message, widget.status.value, re.S), widget.status.value
    errors = [m for s, m in notes() if "error" in s]
    assert errors and re.search(message, errors[-1], re.S), notes()
    assert _unchanged(viewer, before)
    assert widget.run_button.text == "Run" and not widget.running
    # napari is alive and the next good run works
    good = viewer.add_image(np.random.default_rng(0).random((48, 40)).astype(np.float32), name="good")
    widget.image.value = good
    widget.channels.value = None
    widget.model.value = "tiny"
    run_and_wait(widget)
    assert viewer.layers["good [tiny] labels"].data.shape == (48, 40), widget.status.value
    assert _unchanged(viewer, before + [("good", good.data)] + _layers(viewer)[-1:])


def test_segment_refuses_a_keras_model_file_before_listing_it(segment_widget, tmp_path, notes):
    import zipfile

    viewer, widget = segment_widget
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF")
    choices = list(widget.model.choices)
    widget.add_model_file(str(path))
    assert "Keras model" in widget.status.value and any("Keras" in m for _, m in notes())
    assert list(widget.model.choices) == choices


# -- Segment widget: odd but usable ----------------------------------------------------------
# (id, add_layer(viewer, tmp_path), expected labels shape, regex of a warning notification or None)
ACCEPTED_SEGMENT = [
    ("bool-layer", lambda v, t: v.add_image(np.indices((48, 40)).sum(0) % 3 == 0, name="odd"), (48, 40), None),
    ("float16-layer", lambda v, t: v.add_image(np.random.default_rng(1).random((48, 40)).astype(np.float16),
                                               name="odd"), (48, 40), None),
    ("uint64-huge-layer", lambda v, t: v.add_image((np.uint64(2**63) + np.arange(48 * 40, dtype=np.uint64)
                                                    * np.uint64(2**40)).reshape(48, 40), name="odd"), (48, 40), None),
    ("int8-negative-layer", lambda v, t: v.add_image(np.random.default_rng(2).integers(-128, 127, (48, 40))
                                                     .astype(np.int8), name="odd"), (48, 40), None),
    ("1x1-layer", lambda v, t: v.add_image(np.ones((1, 1), np.float32), name="odd"), (1, 1), r"constant"),
    ("thin-1x200-layer", lambda v, t: v.add_image(np.random.default_rng(3).random((1, 200)), name="odd"), (1, 200),
     None),
    ("all-zero-layer", lambda v, t: v.add_image(np.zeros((48, 40), np.uint8), name="odd"), (48, 40), r"constant"),
    ("all-nan-layer", lambda v, t: v.add_image(np.full((48, 40), np.nan, np.float32), name="odd"), (48, 40),
     r"no finite values"),
    ("inf-layer", lambda v, t: v.add_image(np.where(np.eye(48, 40, dtype=bool), np.inf, 0.5)
                                           + np.random.default_rng(4).random((48, 40)), name="odd"), (48, 40),
     r"NaN or infinite"),
    ("rgba-layer", lambda v, t: v.add_image(np.random.default_rng(4).integers(0, 255, (48, 40, 4), np.uint8),
                                            name="odd", rgb=True), (48, 40), r"alpha channel"),
    ("dask-layer", lambda v, t: v.add_image(_dask(), name="odd"), (2, 48, 40), None),
    ("memory-mapped-layer", lambda v, t: v.add_image(_memmap(t), name="odd"), (48, 40), None),
]


@pytest.mark.parametrize("add_layer,shape,warning", _params(ACCEPTED_SEGMENT))
def test_segment_odd_layers_with_a_warning_where_needed(installed, segment_widget, run_and_wait, notes, tmp_path,
                                                        one_thread, add_layer, shape, warning):
    viewer, widget = segment_widget
    widget.refresh_models()
    layer = add_layer(viewer, tmp_path)
    widget.image.value = layer
    widget.model.value = "tiny"
    before = _layers(viewer)
    run_and_wait(widget)
    labels = viewer.layers["odd [tiny] labels"]
    assert labels.data.shape == shape, widget.status.value
    assert "objects in" in widget.status.value
    assert _unchanged(viewer, before + [(labels.name, np.asarray(labels.data))])  # the image layer is untouched
    warnings = [m for s, m in notes() if "warning" in s]
    if warning:
        assert any(re.search(warning, m) for m in warnings), notes()
    else:
        assert not any("constant" in m or "NaN" in m for m in warnings), notes()
    assert not [m for s, m in notes() if "error" in s]


# -- Fine-tune widget ---------------------------------------------------------------------------


def _corrections(viewer, image, labels, name="cells", rgb=False):
    """An image layer, its corrections (as the Correct widget makes them) and a whole-image reviewed layer."""
    viewer.add_image(image, name=name, rgb=rgb)
    viewer.add_labels(np.ones(np.shape(labels), np.uint8), name=f"{name} reviewed",
                      metadata={"napari_unet": {"kind": "reviewed", "corrections": f"{name} corrections"}})
    viewer.add_labels(labels, name=f"{name} corrections",
                      metadata={"napari_unet": {"kind": "corrections", "source": name,
                                                "reviewed": f"{name} reviewed"}})


def _nuclei(shape=(64, 64)):
    from napari_unet.synthetic import fluorescent_nuclei

    image, labels = fluorescent_nuclei(shape=shape, n_nuclei=6, seed=0)
    return image, labels.astype(np.int32)


def _corrupt_index(viewer, widget, tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "index.json").write_text("{broken")
    widget.source.value = "training-set folder"
    widget.folder.value = str(tmp_path / "set")


def _unwritable_model_folder(viewer, widget, tmp_path, monkeypatch):
    image, labels = _nuclei()
    _corrections(viewer, image, labels)
    (tmp_path / "a-file").write_text("mine")
    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(tmp_path / "a-file" / "models"))


# (id, setup(viewer, widget, tmp_path, monkeypatch), base model, regex)
REFUSED_FINETUNE = [
    ("negative-label-ids", lambda v, w, t, m: _corrections(v, _nuclei()[0], -_nuclei()[1]), "tiny",
     r"'cells corrections': The labels hold negative ids.*use 0 for background"),
    ("corrections-of-another-size", lambda v, w, t, m: _corrections(v, _nuclei()[0], _nuclei((64, 80))[1]), "tiny",
     r"corrections 'cells corrections' \(64, 80\) do not fit the image 'cells' \(64, 64\).*correct a labels layer"),
    ("image-layer-removed", lambda v, w, t, m: (_corrections(v, *_nuclei()), v.layers.remove("cells")), "tiny",
     r"image of 'cells corrections' \(cells\) is no longer in the viewer.*open it again"),
    ("2d-corrections-3d-base-model", lambda v, w, t, m: _corrections(v, *_nuclei()), "unet-3d",
     r"base model is 3D.*choose a 2D base model"),
    ("two-channel-image-one-channel-model",
     lambda v, w, t, m: _corrections(v, np.stack([_nuclei()[0]] * 2), _nuclei()[1]), "tiny",
     r"takes 1 channel\(s\) but the image 'cells' has 2.*choose a base model"),
    ("two-channel-base-model-grey-image", lambda v, w, t, m: _corrections(v, *_nuclei()), "two-channel",
     r"takes 2 channel\(s\) but the image 'cells' has 1"),
    ("corrupt-training-set-index", lambda v, w, t, m: _corrupt_index(v, w, t), "tiny",
     r"index\.json is not a readable training-set index"),
    ("truncated-base-model", lambda v, w, t, m: (_corrections(v, *_nuclei()),
                                                 (user_model_dir() / "broken.safetensors").write_bytes(b"\x10" * 40),
                                                 w.refresh_models()), "broken",
     r"broken\.safetensors.*(truncated|not a safetensors)"),
    ("unwritable-model-folder", _unwritable_model_folder, "unet", r"Cannot write models to .*NAPARI_UNET_MODEL_DIR"),
]


@pytest.mark.parametrize("setup,base,message", _params(REFUSED_FINETUNE))
def test_finetune_refuses_with_a_notification_and_changes_nothing(installed, finetune_widget, click, qtbot, notes,
                                                                  tmp_path, monkeypatch, one_thread, setup, base,
                                                                  message):
    viewer, widget = finetune_widget
    widget.refresh_models()
    folder = user_model_dir()  # before setup(), which may point NAPARI_UNET_MODEL_DIR elsewhere
    setup(viewer, widget, tmp_path, monkeypatch)
    widget.model.value = base
    widget.minutes.value = 0.1
    before, models_before = _layers(viewer), sorted(p.name for p in folder.iterdir())
    click(widget.train_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert re.search(message, widget.status.value, re.S), widget.status.value
    errors = [m for s, m in notes() if "error" in s]
    assert errors and re.search(message, errors[-1], re.S), notes()
    assert _unchanged(viewer, before)
    assert widget.train_button.text == "Train" and widget.last_result is None
    assert sorted(p.name for p in folder.iterdir()) == models_before  # no model, no temporary file


def test_finetune_after_a_refusal_trains_colour_images_as_grey(installed, finetune_widget, click, qtbot, notes,
                                                                one_thread):
    """The user clicks Train with a mistake in the corrections, reads the message, fixes it, and trains."""
    viewer, widget = finetune_widget
    widget.refresh_models()
    image, labels = _nuclei()
    rgb = np.stack([image] * 3, axis=-1)
    _corrections(viewer, rgb, -labels, rgb=True)
    widget.model.value = "tiny"
    widget.minutes.value = 0.1
    widget.validate.value = False  # one 64 px image: nothing to hold out
    click(widget.train_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert "negative ids" in widget.status.value
    viewer.layers["cells corrections"].data = labels  # the user fixes the corrections
    image_before = viewer.layers["cells"].data.copy()
    click(widget.train_button)
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    result = widget.last_result
    assert result is not None and result.path is not None and result.path.exists(), widget.status.value
    assert result.name in user_models()
    assert any("converted to grey" in m for s, m in notes() if "warning" in s), notes()
    assert np.array_equal(viewer.layers["cells"].data, image_before)  # the RGB layer itself is untouched
