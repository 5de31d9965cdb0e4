"""Where models live, by name: the bundled ones and the user's folder (no torch, no Qt).

Kept apart from :mod:`napari_unet.modelfile` so that a widget can list models without
importing PyTorch on napari's Qt thread.
"""

from __future__ import annotations

import os
from pathlib import Path

SUFFIX = ".safetensors"
BUNDLED_DIR = Path(__file__).parent / "weights"


class ModelFileError(ValueError):
    """A model file that cannot be used, with a message saying why and what to do."""


_listeners: list = []


def on_models_changed(callback) -> None:
    """Call ``callback()`` whenever :func:`notify_models_changed` is called (e.g. a widget's model
    list refreshes when a fine-tuned model is saved). Bound methods are held weakly."""
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    _listeners.append(ref)


def notify_models_changed() -> None:
    """Tell every listener that the set of installed models changed."""
    for ref in list(_listeners):
        callback = ref()
        if callback is None:
            _listeners.remove(ref)
            continue
        try:
            callback()
        except RuntimeError:  # a widget whose Qt object is gone
            _listeners.remove(ref)


def bundled_models() -> dict[str, Path]:
    """Bundled trained models shipped in the package: name -> file."""
    # the classic U-Net first: it is what a widget offers by default
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob(f"*{SUFFIX}"), key=lambda p: (p.stem != "unet", p.stem))}


def user_model_dir() -> Path:
    """Where fine-tuned models are kept (``NAPARI_UNET_MODEL_DIR`` overrides the platform default)."""
    env = os.environ.get("NAPARI_UNET_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False)) / "models"


def user_models() -> dict[str, Path]:
    """The user's own model files in :func:`user_model_dir`: name -> file."""
    folder = user_model_dir()
    return {p.stem: p for p in sorted(folder.glob(f"*{SUFFIX}"))} if folder.is_dir() else {}


def known_models() -> dict[str, Path]:
    """Bundled models first, then the user's; a bundled name wins over a user file of the same name."""
    bundled = bundled_models()
    return {**bundled, **{k: v for k, v in user_models().items() if k not in bundled}}


def resolve_model_path(path_or_name: str | os.PathLike) -> Path:
    """A bundled or user model's name, or a path to a model file, as a path."""
    text = str(path_or_name)
    bundled = known_models()
    if text in bundled:
        return bundled[text]
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or text.endswith(SUFFIX):
        return path
    names = ", ".join(bundled) or "none installed"
    raise ModelFileError(f"{text!r} is neither a bundled model ({names}) nor an existing model file.")


def postprocess_defaults(config: dict) -> dict:
    """Post-processing settings tuned for a model (threshold, min_size, split_touching, split_depth;
    files from before split_depth was tuned split at depth 1, as they were tuned with)."""
    defaults = {"threshold": 0.5, "min_size": 16, "split_touching": True, "split_depth": 1.0}
    tuned = config.get("provenance", {}).get("postprocess", {})
    return {**defaults, **{k: v for k, v in tuned.items() if k in defaults}}


def peek_config(path_or_name: str | os.PathLike) -> dict | None:
    """A model file's napari-unet config read straight from its safetensors header (no PyTorch,
    no validation: :func:`napari_unet.modelfile.read_config` checks it), or None when the file is
    missing or not a napari-unet model. A BioImage.IO package exported by napari-unet gives the
    config it carries (:func:`napari_unet.bioimageio.peek_package`). For showing a model's settings before PyTorch is loaded."""
    import json
    import struct

    try:
        path = resolve_model_path(path_or_name)
        from .bioimageio import is_package, peek_package

        if is_package(path):  # read from its YAML, without bioimageio or PyTorch
            return peek_package(path)
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(f.read(size))
        return json.loads(header["__metadata__"]["napari_unet"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
