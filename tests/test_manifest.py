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
