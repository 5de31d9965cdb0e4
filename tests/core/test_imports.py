"""The core imports no Qt, napari or magicgui; importing the package imports no torch."""

import json
import subprocess
import sys

#: Parts of the package that are Qt by design, and why; every other module is core and is checked.
#: (napari.yaml's other entry points, the reader ``napari_unet._reader`` and the sample data
#: ``napari_unet._sample_data``, hand napari plain data: they are core and checked like the rest.)
QT_BY_DESIGN = {
    "napari_unet.widgets": "the dock widgets of napari.yaml (Segment, Correct, Fine-tune, Deep supervision) and "
                           "their thread workers and plots: made of Qt, napari and magicgui",
}

#: What the core must never load (top-level package names in ``sys.modules``).
GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")


def _qt_by_design(name: str) -> bool:
    return any(name == part or name.startswith(part + ".") for part in QT_BY_DESIGN)


def core_modules() -> list[str]:
    """Every module of the package but those Qt by design (found by walking it: a new module is covered)."""
    import pkgutil

    import napari_unet

    return sorted(m.name for m in pkgutil.walk_packages(napari_unet.__path__, "napari_unet.")
                  if not _qt_by_design(m.name))


CORE = core_modules()


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _gui_brought_in_by(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` one after the other in a fresh interpreter; for each, the GUI packages
    that appeared in ``sys.modules`` while it was imported (a GUI package is blamed on the first
    module that brought it in)."""
    code = f"""
import importlib, json, sys
GUI = set({list(GUI)!r})
def gui():
    return {{name.split(".")[0] for name in sys.modules}} & GUI
before, blamed = gui(), {{}}
for name in {modules!r}:
    importlib.import_module(name)
    now = gui()
    if now - before:
        blamed[name] = sorted(now - before)
    before = now
print(json.dumps(blamed))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"importing the core failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_no_gui():
    assert {"napari_unet.scaling", "napari_unet.finetune", "napari_unet.cli", "napari_unet.inference.large"} <= set(CORE)
    loaded = _modules_after("\n".join(f"import {m}" for m in CORE))
    assert "torch" in loaded
    for gui in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"):
        assert gui not in loaded, gui


def test_the_walk_covers_every_module_outside_the_widgets():
    """The walk finds modules added since (the jobs module, the parts of block-wise inference,
    training's modules, the napari entry points that are not widgets), and nothing of the widgets."""
    assert {"napari_unet.jobs", "napari_unet.inference.runners", "napari_unet.inference.blockplan",
            "napari_unet.inference.blocktasks", "napari_unet.inference.blockstores",
            "napari_unet.inference.distributed", "napari_unet.training.trainer", "napari_unet._reader",
            "napari_unet._sample_data", "napari_unet.models.registry"} <= set(CORE)
    assert not [m for m in CORE if m.startswith("napari_unet.widgets")]
    assert len(CORE) > 50


def test_each_core_module_imports_no_gui():
    """Every core module, imported in turn in a fresh interpreter, brings in no GUI package; a
    failure names the module that did."""
    blamed = _gui_brought_in_by(CORE)
    assert not blamed, "core modules that import a GUI toolkit: " + "; ".join(
        f"{module} -> {', '.join(gui)}" for module, gui in blamed.items())


def test_package_import_is_light():
    loaded = _modules_after("import napari_unet, napari_unet._sample_data")
    assert "torch" not in loaded and "napari" not in loaded


def test_jobs_module_is_light():
    """Progress events, cancellation and draining cost no torch (and no numpy) to import."""
    loaded = _modules_after("import napari_unet.jobs")
    assert "torch" not in loaded and "numpy" not in loaded
    assert not {name.split(".")[0] for name in loaded} & set(GUI)


def test_what_docks_read_on_the_qt_thread_imports_no_torch():
    """The docks' controls read the fine-tuning presets and settings, and make their predictor caches,
    on the Qt thread while the warm-up worker imports torch: importing torch there too would wait on
    the import lock and freeze napari for the whole import. The command line's parser (``--help``)
    must not pay for torch either."""
    loaded = _modules_after("import napari_unet.training.finetune, napari_unet.training.resume, "
                            "napari_unet.finetune, napari_unet.inference.predictor_cache\n"
                            "from napari_unet.training.finetune import FinetuneSettings, LOSS_PRESETS\n"
                            "FinetuneSettings().weight_map()\n"
                            "from napari_unet.inference.predictor_cache import PredictorCache, PredictorSettings\n"
                            "PredictorCache(2); PredictorSettings('unet')\n"
                            "from napari_unet.cli.parser import build_parser; build_parser()")
    assert "torch" not in loaded
