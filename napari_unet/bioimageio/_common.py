"""What every module of :mod:`napari_unet.bioimageio` shares: names of package files, whether
bioimageio.core is installed, and the one-line errors. Imports neither bioimageio nor PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL_HINT = 'BioImage.IO packages need bioimageio.core: pip install "napari-unet[bioimageio]"'
#: the names a package's description file has (a zip holds it at its top level)
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: ``config["architecture"]`` of a model that runs a package's own weights (not in the registry)
PACKAGE_ARCHITECTURE = "bioimageio"
LICENSE = "BSD-3-Clause"  # napari-unet's licence (pyproject.toml), under which its weights are shared
#: ``scale_range``'s epsilon: ``(x - low) / (high - low + eps)``
SCALE_RANGE_EPS = 1e-6
#: side of the synthetic test image (rounded up to the network's size divisor)
TEST_SIZE = 256
ARCHITECTURE_FILE = "napari_unet_architecture.py"
ARCHITECTURE_CALLABLE = "napari_unet_network"


def available() -> bool:
    """Whether ``bioimageio.core`` is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("bioimageio.core") is not None
    except (ImportError, ValueError):
        return False


def _installed() -> bool:
    """:func:`available` as ``napari_unet.bioimageio`` exports it, looked up at each call: one replaced
    there (a test without bioimageio.core) is obeyed by every module of the package."""
    from .. import bioimageio

    return bioimageio.available()


def _require() -> None:
    if not _installed():
        raise ImportError(INSTALL_HINT)


def _fail(path: Path, why: str):
    from ..catalog import ModelFileError

    raise ModelFileError(f"{path.name}: {why}")


def _eps(normalization: dict) -> float:
    """The package's epsilon for a normalisation (BioImage.IO needs one above 0)."""
    return float(normalization.get("eps") or SCALE_RANGE_EPS)


def _failures(summary) -> str:
    """The first three errors of a bioimageio ``ValidationSummary`` in one line."""
    errors = [f"{d.name}: {'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errors[:3]) or str(summary.status)
