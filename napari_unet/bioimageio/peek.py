"""A package read from its YAML alone (no bioimageio, no PyTorch): fast enough for the Qt thread and
for showing a model's settings before it is loaded."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ._common import DESCRIPTION_NAMES, INSTALL_HINT, _installed


def is_package(path) -> bool:
    """True for an ``rdf.yaml`` / ``bioimageio.yaml`` file, or a zip holding one at its top level."""
    path = Path(path)
    if path.name in DESCRIPTION_NAMES or path.name.endswith(".bioimageio.yaml"):
        return path.is_file()
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                return False
        with zipfile.ZipFile(path) as archive:
            return any(_is_description_name(n) for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_description_name(name: str) -> bool:
    return name in DESCRIPTION_NAMES or ("/" not in name and name.endswith(".bioimageio.yaml"))


def _read_rdf(path: Path) -> dict:
    """The package's description as plain YAML data (no validation)."""
    import yaml

    if path.name.endswith(".yaml"):
        text = path.read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if _is_description_name(n))
            text = archive.read(name).decode("utf-8")
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def peek_package(path) -> dict | None:
    """The napari-unet config a package written by :func:`~napari_unet.bioimageio.export_model` carries
    (its post-processing, object size...), read from its YAML without bioimageio or PyTorch; None for
    other packages or unreadable files. For showing a model's settings before it is loaded."""
    try:
        config = (_read_rdf(Path(path)).get("config") or {}).get("napari_unet")
    except Exception:  # a damaged package: import_model says what is wrong
        return None
    return dict(config) if isinstance(config, dict) else None


def check_package_quickly(path) -> dict:
    """A first check of a package from its YAML (no bioimageio, no PyTorch: fast enough for the Qt
    thread): bioimageio.core is installed, it describes a model, and it has weights napari-unet runs.
    Returns the YAML data; :func:`~napari_unet.bioimageio.import_model` checks the rest.
    ``ModelFileError`` says what is wrong."""
    from ..catalog import ModelFileError

    path = Path(path)
    if not _installed():
        raise ModelFileError(f"{path.name} is a BioImage.IO package. {INSTALL_HINT}.")
    try:
        rdf = _read_rdf(path)
    except Exception as exc:
        raise ModelFileError(f"{path.name}: its description cannot be read ({type(exc).__name__}: {exc}).") from None
    kind = rdf.get("type")
    if kind != "model":
        raise ModelFileError(f"{path.name}: a BioImage.IO {kind or 'untyped'} package, not a model: choose a model "
                             "package.")
    weights = [w for w, entry in (rdf.get("weights") or {}).items() if entry]
    if not {"pytorch_state_dict", "torchscript"} & set(weights):
        raise ModelFileError(f"{path.name}: it has only {', '.join(weights) or 'no'} weights; napari-unet runs "
                             "pytorch_state_dict or torchscript weights.")
    return rdf


def package_summary(path) -> tuple[str, dict | None]:
    """``(one line for the Segment dock, the napari-unet config it carries or None)`` from the YAML."""
    rdf = _read_rdf(Path(path))
    config = (rdf.get("config") or {}).get("napari_unet")
    text = f"BioImage.IO package: {rdf.get('name', Path(path).name)}"
    if isinstance(config, dict):
        text += f" (napari-unet {config.get('architecture', '?')}, {config.get('output', {}).get('target', '?')} target)"
    return text, config if isinstance(config, dict) else None
