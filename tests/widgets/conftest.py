"""Widget tests drive a real napari viewer (under Xvfb in CI) the way a user would."""

import os
import sys

import pytest

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("widget tests need a display: run them under xvfb-run (see README)", allow_module_level=True)


def dock(make_napari_viewer, qtbot, name: str):
    """A viewer with the plugin's widget ``name`` docked through the manifest, once PyTorch is loaded."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    qtbot.waitUntil(lambda: widget._torch_ready, timeout=60_000)
    return viewer, widget


@pytest.fixture
def segment_widget(make_napari_viewer, qtbot):
    """A viewer with the Segment widget docked."""
    return dock(make_napari_viewer, qtbot, "Segment")


@pytest.fixture
def correct_widget(make_napari_viewer):
    """A viewer with the Correct dock."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    return viewer, widget


@pytest.fixture
def finetune_widget(make_napari_viewer, qtbot):
    """A viewer with the Fine-tune widget docked."""
    return dock(make_napari_viewer, qtbot, "Fine-tune")


@pytest.fixture
def supervision_widget(make_napari_viewer, qtbot):
    """A viewer with the Deep-supervision widget docked."""
    return dock(make_napari_viewer, qtbot, "Deep supervision")


@pytest.fixture
def tiny_in_list(make_random_model):
    """The tiny random model installed as a user model, so it shows in the model list."""
    import shutil

    from napari_unet.modelfile import user_model_dir

    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(make_random_model("tiny"), folder / "tiny.safetensors")
    return "tiny"


def _click(button):
    """Click a magicgui push button like a user (a real Qt click)."""
    button.native.click()


@pytest.fixture
def click():
    return _click


@pytest.fixture
def click_and_wait(qtbot):
    """Click a button that starts the dock's job, and wait for the job to end (at once if it
    refused to start)."""

    def click(widget, button, timeout=60_000):
        _click(button)
        qtbot.waitUntil(lambda: not widget.job_running, timeout=timeout)

    return click


@pytest.fixture
def run_and_wait(qtbot):
    """Click Run and wait for the worker to finish."""

    def run(widget, timeout=120_000):
        _click(widget.run_button)
        assert widget.running or widget.status.value  # either started, or refused with a message
        qtbot.waitUntil(lambda: not widget.running, timeout=timeout)

    return run


@pytest.fixture
def slide_labels(tmp_path, monkeypatch):
    """``make(viewer)``: adds a zarr-backed multiscale labels layer of 400x480 synthetic nuclei
    ("slide labels") and returns ``(truth, store, pyramid, layer)``; Correct's region size is
    lowered so that the layer is corrected region by region."""
    import numpy as np
    import zarr

    from napari_unet import editing
    from napari_unet.inference.pyramid import Pyramid
    from napari_unet.synthetic import fluorescent_nuclei

    monkeypatch.setattr(editing, "REGION_PIXELS", 160 * 160)

    def make(viewer):
        _, truth = fluorescent_nuclei((400, 480), 60, seed=3)
        store = zarr.create(shape=truth.shape, chunks=(128, 128), dtype=np.int32,
                            store=str(tmp_path / "labels.zarr"))
        store[:] = truth
        pyramid = Pyramid(store, tmp_path / "pyramid", min_side=100)
        pyramid.update((slice(None), slice(None)))
        layer = viewer.add_labels(pyramid.levels, name="slide labels", metadata={"napari_unet": {"kind": "labels"}})
        return truth, store, pyramid, layer

    return make
