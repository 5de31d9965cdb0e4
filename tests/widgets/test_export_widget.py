"""The docks' Export to BioImage.IO… button, and a package loaded with Load model file…"""

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")


def _save_dialog_returns(monkeypatch, path):
    from qtpy.QtWidgets import QFileDialog

    asked = []

    def fake(parent, caption, suggested, filters):
        asked.append((suggested, filters))
        return str(path), filters

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(fake))
    return asked


def test_segment_dock_exports_the_chosen_model_then_runs_the_package(tiny_in_list, segment_widget, qtbot, click,
                                                                     run_and_wait, monkeypatch, tmp_path):
    from napari_unet.bioimageio import is_package

    viewer, widget = segment_widget
    widget.model.value = tiny_in_list
    target = tmp_path / "shared" / "tiny.zip"
    asked = _save_dialog_returns(monkeypatch, target)
    click(widget.export_button)
    assert asked and asked[0][0].endswith("tiny.zip") and "*.zip" in asked[0][1]
    assert widget.job_running and "exporting 'tiny'" in widget.status.value  # the UI is not blocked meanwhile
    qtbot.waitUntil(lambda: not widget.job_running, timeout=120_000)
    assert is_package(target), widget.status.value
    assert f"exported 'tiny' to {target}" in widget.status.value and widget.run_button.text == "Run"

    # the package in the model list, described from its YAML, and run through the dock
    widget.add_model_file(str(target))
    assert widget.model.value == str(target)
    assert widget.model_info.value.startswith("BioImage.IO package: napari-unet tiny")
    viewer.add_image(np.random.default_rng(0).random((96, 80)).astype(np.float32), name="img")
    run_and_wait(widget)
    labels = viewer.layers["img [tiny] labels"]
    assert labels.data.shape == (96, 80)


def test_finetune_dock_exports_the_base_model(tiny_in_list, finetune_widget, qtbot, click, monkeypatch, tmp_path):
    viewer, widget = finetune_widget
    widget.model.value = tiny_in_list
    target = tmp_path / "base.zip"
    _save_dialog_returns(monkeypatch, target)
    click(widget.export_button)
    qtbot.waitUntil(lambda: not widget.job_running, timeout=120_000)
    assert target.is_file() and "exported 'tiny'" in widget.status.value


def test_without_bioimageio_core_the_button_says_how_to_install(segment_widget, click, monkeypatch):
    from napari_unet.widgets import _export

    viewer, widget = segment_widget
    monkeypatch.setattr(_export, "available", lambda: False)
    assert 'pip install "napari-unet[bioimageio]"' in _export.export_button().tooltip
    click(widget.export_button)
    assert 'pip install "napari-unet[bioimageio]"' in widget.status.value and not widget.job_running


def test_finetune_dock_button_says_cancel_during_an_export_and_cancels_it(tiny_in_list, finetune_widget, qtbot,
                                                                         click, monkeypatch, tmp_path):
    """The Train button says Cancel while an export runs, and clicking it cancels the export
    (with the export's words), not starting a training run nor saying 'the best model is kept'."""
    viewer, widget = finetune_widget
    widget.model.value = tiny_in_list
    target = tmp_path / "base.zip"
    _save_dialog_returns(monkeypatch, target)
    click(widget.export_button)
    assert widget.job_running and widget.train_button.text == "Cancel"
    click(widget.train_button)
    assert widget.status.value == "cancelling the export…"
    qtbot.waitUntil(lambda: not widget.job_running, timeout=120_000)
    assert widget.train_button.text == "Train" and widget.job_name == "Fine-tuning"
    if not target.exists():  # cancelled before the end (else the export was quicker than the click)
        assert widget.status.value == "export cancelled: nothing was written"
    assert widget.cancelling_message == "stopping (the best model so far is kept)…"
