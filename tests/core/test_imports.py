"""The core imports no Qt, napari or magicgui; importing the package imports no torch."""

import json
import subprocess
import sys

def core_modules() -> list[str]:
    """Every module of the package but the widgets (found by walking it: a new module is covered)."""
    import pkgutil

    import napari_unet

    return sorted(m.name for m in pkgutil.walk_packages(napari_unet.__path__, "napari_unet.")
                  if not m.name.startswith("napari_unet.widgets"))


CORE = core_modules()


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_imports_no_gui():
    assert {"napari_unet.scaling", "napari_unet.finetune", "napari_unet.cli", "napari_unet.inference.large"} <= set(CORE)
    loaded = _modules_after("\n".join(f"import {m}" for m in CORE))
    assert "torch" in loaded
    for gui in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"):
        assert gui not in loaded, gui


def test_package_import_is_light():
    loaded = _modules_after("import napari_unet, napari_unet._sample_data")
    assert "torch" not in loaded and "napari" not in loaded
