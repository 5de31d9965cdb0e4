"""The Segment widget in a real napari viewer: run, cancel, re-run, bad input."""

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_unet.modelfile import bundled_models


def layer_names(viewer):
    return [layer.name for layer in viewer.layers]


def test_bundled_unet_segments_the_nuclei_sample(segment_widget, run_and_wait):
    viewer, widget = segment_widget
    assert "unet" in bundled_models(), "the classic U-Net must ship with trained weights"
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    widget.reset_choices()
    assert widget.image.value is image  # the image, not the selected ground-truth labels
    assert widget.model.value == "unet"
    assert widget.device_info.value.startswith("runs on: ")
    widget.add_probabilities.value = True
    run_and_wait(widget)
    labels = viewer.layers["nuclei (synthetic) [unet] labels"]
    probs = viewer.layers["nuclei (synthetic) [unet] probabilities"]
    assert viewer.layers.index(probs) < viewer.layers.index(labels)  # below: the labels stay visible
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.int32
    assert probs.data.shape == image.data.shape
    n_true = int(truth.data.max())
    assert 0.7 * n_true <= labels.data.max() <= 1.3 * n_true
    fg_true, fg_pred = truth.data > 0, labels.data > 0
    assert 2 * (fg_true & fg_pred).sum() / (fg_true.sum() + fg_pred.sum()) > 0.8
    assert "objects in" in widget.status.value
    assert viewer.layers.selection.active is labels


def test_rerun_updates_its_own_layer_but_never_the_users_edits(tiny_in_list, segment_widget, run_and_wait):
    viewer, widget = segment_widget
    viewer.add_image(np.random.default_rng(0).random((96, 128)).astype(np.float32), name="img")
    widget.model.value = tiny_in_list
    widget.threshold.value = 0.3
    run_and_wait(widget)
    assert layer_names(viewer) == ["img", "img [tiny] labels"]
    first = viewer.layers["img [tiny] labels"]
    widget.threshold.value = 0.6
    widget.image.value = viewer.layers["img"]
    run_and_wait(widget)
    assert layer_names(viewer) == ["img", "img [tiny] labels"]  # updated in place
    first.data[0:5, 0:5] = 99  # the user paints a correction
    edited = first.data.copy()
    widget.image.value = viewer.layers["img"]
    run_and_wait(widget)
    assert layer_names(viewer) == ["img", "img [tiny] labels", "img [tiny] labels (2)"]
    assert np.array_equal(first.data, edited)


def test_the_chosen_image_stays_chosen_when_the_result_layer_is_added(tiny_in_list, segment_widget, run_and_wait):
    """The user picks image A while B is the active layer: adding A's result must not switch the
    box to B, so that Run again segments A again."""
    viewer, widget = segment_widget
    rng = np.random.default_rng(1)
    a = viewer.add_image(rng.random((64, 64)).astype(np.float32), name="A")
    viewer.add_image(rng.random((64, 64)).astype(np.float32), name="B")  # B is active
    widget.model.value = tiny_in_list
    widget.image.value = a
    run_and_wait(widget)
    assert widget.image.value is a
    widget.threshold.value = 0.6
    run_and_wait(widget)
    assert layer_names(viewer) == ["A", "B", "A [tiny] labels"]  # A's result updated, no result for B
    viewer.layers.selection.active = viewer.layers["B"]  # choosing a layer in the list still picks it
    assert widget.image.value is viewer.layers["B"]


def test_each_model_gets_its_own_result_layer(segment_widget, run_and_wait):
    """The two 2.5D models once shared the stem 'unet-2' and the second run overwrote the first's
    layer: names carry the model's full name, and a layer is only updated by its own model."""
    viewer, widget = segment_widget
    viewer.open_sample("napari-unet", "nuclei3d")
    image = viewer.layers[0]
    firsts = {}
    for model in ("unet-2.5d-stack", "unet-2.5d"):
        widget.image.value = image
        widget.model.value = model
        run_and_wait(widget, timeout=300_000)
        firsts[model] = viewer.layers[f"{image.name} [{model}] labels"]
    assert firsts["unet-2.5d-stack"] is not firsts["unet-2.5d"]
    assert firsts["unet-2.5d-stack"] in viewer.layers and firsts["unet-2.5d"] in viewer.layers
    assert firsts["unet-2.5d-stack"].metadata["napari_unet"]["model"] == "unet-2.5d-stack"


def test_cancel_mid_run_changes_no_layer(tiny_in_list, segment_widget, qtbot, click, run_and_wait):
    viewer, widget = segment_widget
    viewer.add_image(np.random.default_rng(1).random((1500, 1500)).astype(np.float32), name="big")
    widget.model.value = tiny_in_list
    widget.tile_size.value = "256"
    before = layer_names(viewer)
    click(widget.run_button)
    assert widget.run_button.text == "Cancel"
    qtbot.waitUntil(lambda: "%" in widget.status.value, timeout=30_000)
    click(widget.run_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    assert layer_names(viewer) == before
    assert widget.run_button.text == "Run" and "cancelled" in widget.status.value
    # and the next run works
    widget.tile_size.value = "auto"
    run_and_wait(widget)
    assert "big [tiny] labels" in layer_names(viewer)


def test_stacks_are_predicted_plane_by_plane_with_scale(tiny_in_list, segment_widget, run_and_wait):
    viewer, widget = segment_widget
    viewer.add_image(np.random.default_rng(2).random((3, 64, 80)).astype(np.float32), name="stack",
                     scale=(2.0, 0.5, 0.5))
    widget.model.value = tiny_in_list
    run_and_wait(widget)
    labels = viewer.layers["stack [tiny] labels"]
    assert labels.data.shape == (3, 64, 80)
    assert tuple(labels.scale) == (2.0, 0.5, 0.5)


def test_rgb_image_is_converted_and_reported(tiny_in_list, segment_widget, run_and_wait):
    viewer, widget = segment_widget
    viewer.add_image(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8), name="rgb")
    widget.model.value = tiny_in_list
    assert widget.channels.value is None  # colour axis handled, not a plane axis
    run_and_wait(widget)
    assert viewer.layers["rgb [tiny] labels"].data.shape == (64, 64)


@pytest.mark.parametrize("data,message", [
    (np.full((40, 40), 7, np.uint16), "constant"),
    (np.where(np.eye(40, dtype=bool), np.nan, 1.0), "NaN"),
])
def test_odd_images_are_segmented_with_a_warning(tiny_in_list, segment_widget, run_and_wait, data, message):
    viewer, widget = segment_widget
    viewer.add_image(data, name="odd")
    widget.model.value = tiny_in_list
    run_and_wait(widget)
    assert "odd [tiny] labels" in layer_names(viewer)
    assert message in widget.status.value


@pytest.mark.parametrize("setup,message", [
    (lambda v: None, "no image layer"),
    (lambda v: v.add_labels(np.zeros((10, 10), int), name="mask"), "'mask' is a labels layer"),
    (lambda v: v.add_points([[1, 1]], name="pts"), "'pts' is a points layer"),
    (lambda v: v.add_image(np.zeros((2, 3, 16, 16)), name="4d"), "Slice the data"),
])
def test_bad_input_gives_a_message_and_changes_nothing(tiny_in_list, segment_widget, run_and_wait, setup, message):
    viewer, widget = segment_widget
    setup(viewer)
    widget.model.value = tiny_in_list
    before = layer_names(viewer)
    run_and_wait(widget)
    assert message.lower() in widget.status.value.lower()
    assert layer_names(viewer) == before


@pytest.mark.parametrize("content,message", [
    (b"\x80\x04garbage", "pickle"),
    (b"PK\x03\x04garbage", "PyTorch checkpoint"),
    (b"not a model", "not a safetensors"),
])
def test_unusable_model_files_are_refused(segment_widget, tmp_path, content, message):
    viewer, widget = segment_widget
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    choices_before = widget.model.choices
    widget.add_model_file(str(path))
    assert message in widget.status.value
    assert widget.model.choices == choices_before


def test_opening_the_widget_does_not_import_torch_on_the_qt_thread(make_napari_viewer, qtbot):
    """PyTorch is imported by a worker; the widget fills in the device once it is loaded."""
    import subprocess
    import sys

    code = ("import sys, napari\n"
            "v = napari.Viewer(show=False)\n"
            "import napari_unet.widgets.segment as s\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    qtbot.waitUntil(lambda: widget.device_info.value.startswith("runs on: "), timeout=60_000)


def test_the_dock_modules_leave_the_heavy_imports_to_the_warm_up():
    """Docking runs on the Qt thread: importing a dock's module must not load PyTorch or
    scipy.ndimage (the Correct dock's scipy import stalled napari for 0.35-0.5 s)."""
    import subprocess

    code = ("import sys, napari\n"
            "v = napari.Viewer(show=False)\n"
            "import napari_unet.widgets.segment, napari_unet.widgets.correct\n"
            "import napari_unet.widgets.finetune, napari_unet.widgets.supervision\n"
            "print(sorted({'torch', 'scipy.ndimage'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:] + out.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_network_runs_at_a_lower_priority_than_the_viewer(tiny_in_list, segment_widget, run_and_wait,
                                                               monkeypatch):
    """On a busy CPU napari's own thread comes first: the worker that runs the network is niced."""
    from napari_unet.inference.predictor import Predictor
    from napari_unet.widgets._base import BACKGROUND_NICENESS

    seen, own = [], os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    forward = Predictor._forward

    def spying(self, batch):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return forward(self, batch)

    monkeypatch.setattr(Predictor, "_forward", spying)
    viewer, widget = segment_widget
    viewer.add_image(np.random.default_rng(0).random((96, 128)).astype(np.float32), name="img")
    widget.model.value = tiny_in_list
    run_and_wait(widget)
    assert seen and set(seen) == {max(own, BACKGROUND_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the Qt thread keeps its own
    assert "img [tiny] labels" in [layer.name for layer in viewer.layers]


def test_the_warm_up_loads_what_a_run_imports():
    """Imports hold Python's GIL: the dock's warm-up (when it opens) loads what a first run imports
    (its result layer included), so the first Run does not stall the viewer on them."""
    import json
    import subprocess
    import sys

    code = """
import json, sys
from napari_unet.widgets._workers import warm_up_imports
from napari_unet.inference.predictor import run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.synthetic import fluorescent_nuclei
warm_up_imports()
image, _ = fluorescent_nuclei((96, 96), 12, seed=0)
before = set(sys.modules)
result = run_to_end(segment_iter("unet", image, device="cpu"))
from napari.layers import Labels
Labels(result.labels)  # the widget builds its result layer in the worker too
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    late = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in late if m.startswith(("scipy", "skimage", "pandas"))], late
    assert len(late) < 20, late


def test_object_size_resizes_for_a_model_that_declares_one(segment_widget, run_and_wait, click, tiny_in_list,
                                                           qtbot):
    """A model fine-tuned at 20 px for objects of 40 px: the field shows 40 and is editable, Measure
    on labels reads the objects of a labels layer, and a run resizes the image (labels keep its
    size). A model that declares no size leaves the field off."""
    import torch

    from napari_unet.modelfile import make_config, save_model, user_model_dir
    from napari_unet.models import build_model

    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16, 32))
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "sized.safetensors", net, make_config(net, "unet", object_diameter=20,
                                                                 image_object_diameter=40))
    viewer, widget = segment_widget
    widget.refresh_models()
    viewer.add_image(np.random.default_rng(0).random((120, 160)).astype(np.float32), name="img")
    widget.model.value = tiny_in_list  # a model that declares no object size
    assert not widget.diameter.enabled and not widget.measure_button.enabled
    widget.model.value = "sized"
    assert widget.diameter.enabled and widget.diameter.value == 40
    yy, xx = np.mgrid[:120, :160]
    discs = np.zeros((120, 160), np.int32)
    for i, (y, x) in enumerate([(30, 30), (80, 100), (40, 120)], start=1):
        discs[(yy - y) ** 2 + (xx - x) ** 2 <= 10 ** 2] = i  # 20 px across
    viewer.add_labels(discs, name="my objects")
    click(widget.measure_button)
    assert widget.diameter.value == pytest.approx(20, abs=0.5) and "my objects" in widget.status.value
    # labels in a store (a large result) are read and measured in a worker, not on the Qt thread
    zarr = pytest.importorskip("zarr")
    store = zarr.zeros(discs.shape, chunks=(64, 64), dtype=np.int32)
    store[:] = np.where(discs > 0, discs + 10, 0)
    viewer.add_labels(store, name="stored objects")
    widget.diameter.value = 33
    click(widget.measure_button)
    assert widget.job_running and "measuring the objects in 'stored objects'" in widget.status.value
    qtbot.waitUntil(lambda: not widget.job_running, timeout=30_000)
    assert widget.diameter.value == pytest.approx(20, abs=0.5) and "stored objects" in widget.status.value
    assert widget.job_name == "Segmentation"
    widget.diameter.value = 80  # objects of 80 px: the network sees the image at a quarter of its size
    widget.image.value = viewer.layers["img"]
    run_and_wait(widget)
    assert widget.last_result.prediction.scale == 0.25
    assert viewer.layers["img [sized] labels"].data.shape == (120, 160)
    assert "resized 0.25x" in widget.status.value
    widget.diameter.value = 0  # 'auto' estimates, also for a model made for objects of a known size
    assert widget.diameter.native.text() == "auto"
    run_and_wait(widget)
    assert widget.last_result.size_estimate is not None and "object size estimated" in widget.status.value


def test_object_size_auto_and_estimate_for_a_general_model(segment_widget, run_and_wait, click, qtbot,
                                                            tiny_in_list):
    """A model that works at one size but was made for no particular objects: the field shows
    'auto', Estimate from image fills it from first passes, and Run with 'auto' estimates first."""
    import tifffile

    from napari_unet.modelfile import load_model, make_config, save_model, user_model_dir
    from napari_unet.scaling import resize_image, scaled_shape

    base = load_model("unet")
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "general.safetensors", base.net, make_config(base.net, "unet", object_diameter=16))
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "nuclei_image.tif"
    image = tifffile.imread(sample).astype(np.float32)
    viewer, widget = segment_widget
    widget.refresh_models()
    viewer.add_image(resize_image(image, scaled_shape(image.shape, 2.5)), name="big nuclei")
    widget.model.value = "general"
    assert widget.diameter.enabled and widget.estimate_button.enabled and widget.diameter.value == 0
    assert widget.diameter.native.text() == "auto"
    click(widget.estimate_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert 25 < widget.diameter.value < 60, widget.status.value
    assert "estimated in 'big nuclei'" in widget.status.value
    widget.diameter.value = 0  # back to auto: Run estimates by itself
    run_and_wait(widget)
    assert "object size estimated: objects of" in widget.status.value
    assert widget.last_result.prediction.scale < 0.7
    widget.refresh_models()
    widget.model.value = tiny_in_list  # a model that declares no size: no estimate to make
    assert not widget.estimate_button.enabled
    widget.model.value = "unet"  # the default: a general model, 'auto' from the start
    assert widget.estimate_button.enabled and widget.diameter.native.text() == "auto"
