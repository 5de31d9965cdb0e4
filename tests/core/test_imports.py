"""The core imports no Qt, napari or magicgui; importing the package imports no torch."""

import json
import subprocess
import sys

CORE = ["napari_unet.models", "napari_unet.modelfile", "napari_unet.devices", "napari_unet.inference.predictor",
        "napari_unet.inference.segment", "napari_unet.inference.postprocess", "napari_unet.synthetic"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_imports_no_gui():
    loaded = _modules_after("\n".join(f"import {m}" for m in CORE))
    assert "torch" in loaded
    for gui in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"):
        assert gui not in loaded, gui


def test_package_import_is_light():
    loaded = _modules_after("import napari_unet, napari_unet._sample_data")
    assert "torch" not in loaded and "napari" not in loaded
