"""What the docks say about a model, read from its file (no Qt): a short description, the object
sizes it declares, whether it has deep supervision and how deep U-Net++ can be pruned.

Reading a config checks it against the model registry, which loads PyTorch: the docks call these
once PyTorch is loaded (before that they read :func:`napari_unet.catalog.peek_config`).
"""

from __future__ import annotations

import os

#: (model file, modification time) -> whether its architecture has deep supervision
_SUPERVISED: dict[tuple[str, int], bool] = {}


def describe_model(name) -> tuple[str, dict | None]:
    """``(text, config)`` of a bundled model, a model file or a BioImage.IO package: the
    architecture's title, its target and what it was trained on (a package: from its YAML).
    ``config`` is None (and ``text`` says why) when the file is unusable; ``ModelFileError`` when
    ``name`` is neither a model's name nor a file."""
    from .bioimageio import is_package, package_summary
    from .modelfile import ModelFileError, read_config, resolve_model_path
    from .models import get_spec

    path = resolve_model_path(name)
    if is_package(path):  # described from its YAML: bioimageio loads it in the worker
        return package_summary(path)
    try:
        config = read_config(path)
    except ModelFileError as exc:
        return f"unusable: {exc}", None
    text = f"{get_spec(config['architecture']).title}, {config['output']['target']} target"
    trained = config.get("provenance", {}).get("data", "")
    # a zero-width space after _ and / lets long folder names wrap at the dock's width instead of being cut
    trained = trained.replace("_", "_\u200b").replace("/", "/\u200b")
    return text + (f"\ntrained on {trained}" if trained else ""), config


def _positive(value) -> float | None:
    return value if isinstance(value, (int, float)) and value > 0 else None


def object_sizes(config: dict) -> tuple[float | None, float | None]:
    """``(network, made_for)``: the object diameter in pixels a model works at (None: it takes
    images at their own size) and the one of the images it was made for (its fine-tuning
    corrections'; None: not known). A peeked config is unchecked: anything else reads as None."""
    sizes = config.get("input") if isinstance(config.get("input"), dict) else {}
    return _positive(sizes.get("object_diameter")), _positive(sizes.get("image_object_diameter"))


def has_deep_supervision(path: str | os.PathLike) -> bool:
    """Whether the model file's architecture has deep supervision (remembered per file and
    modification time: docks ask on every layer event). Raises ``OSError``, ``ModelFileError`` or
    ``KeyError`` for a file that is gone or not a model."""
    from .modelfile import read_config
    from .models import get_spec

    key = (str(path), os.stat(path).st_mtime_ns)
    if key not in _SUPERVISED:
        _SUPERVISED[key] = get_spec(read_config(path)["architecture"]).deep_supervision
    return _SUPERVISED[key]


def deep_supervision_models(models: dict) -> list[str]:
    """The names among ``models`` (name -> file) whose files have deep supervision (unreadable
    files are left out)."""
    from .modelfile import ModelFileError

    names = []
    for name, path in models.items():
        try:
            if has_deep_supervision(path):
                names.append(name)
        except (OSError, ModelFileError, KeyError):
            continue
    return names


def pruning(config: dict) -> tuple[int | None, bool]:
    """``(deepest, prunable)``: the deepest depth a model can be pruned to (its levels but one;
    None when its config does not list them) and whether its architecture can be pruned."""
    from .models import get_spec

    features = config.get("arguments", {}).get("features")
    return (len(features) - 1 if features else None), get_spec(config["architecture"]).prunable
