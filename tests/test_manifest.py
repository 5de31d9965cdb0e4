"""The npe2 manifest is valid and every contribution it names can be imported and used."""

import subprocess
import sys
from pathlib import Path

import npe2
import pytest


def test_manifest_validates():
    out = subprocess.run([str(Path(sys.executable).with_name("npe2")), "validate", "napari-unet"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_contributions():
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-unet")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert "Segment" in widgets
    samples = {s.key for s in manifest.contributions.sample_data}
    assert {"nuclei", "cells", "nuclei3d"} <= samples


@pytest.mark.parametrize("name", ["make_nuclei", "make_cells", "make_nuclei3d"])
def test_sample_commands_return_an_image_and_its_labels(name):
    from napari_unet import _sample_data

    layers = getattr(_sample_data, name)()
    assert [t[2] for t in layers] == ["image", "labels"]
    assert layers[0][0].shape == layers[1][0].shape


def test_docks_are_in_napari_layer_menus_and_the_reader_claims_index_files():
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-unet")
    menus = {menu: [item.command for item in items] for menu, items in manifest.contributions.menus.items()}
    assert "napari-unet.segment_widget" in menus["napari/layers/segment"]
    assert "napari-unet.finetune_widget" in menus["napari/layers/segment"]
    assert menus["napari/layers/annotate"] == ["napari-unet.correct_widget"]
    readers = {r.plugin_name for r in pm.iter_compatible_readers(["/data/set/index.json"])}
    assert "napari-unet" in readers
    # no folder and no image file is claimed: napari never asks which reader to use because of us
    assert "napari-unet" not in {r.plugin_name for r in pm.iter_compatible_readers(["/data/image.tif"])}
