"""npe2 sample-data contributions: synthetic microscopy with exact ground-truth masks.

Each function returns napari LayerDataTuples ``(data, kwargs, layer_type)`` -- an image
layer and its ground-truth labels layer -- built with :mod:`napari_unet.synthetic` at the
default size and seed 0 (deterministic). napari itself is not imported here.
"""

from __future__ import annotations

import numpy as np

from .synthetic import fluorescent_nuclei, nuclei_3d, phase_contrast_cells


def _contrast_limits(image: np.ndarray) -> list[float]:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return [float(np.floor(lo)), float(np.ceil(max(hi, lo + 1)))]


def _pair(image: np.ndarray, labels: np.ndarray, name: str, **common) -> list[tuple]:
    return [
        (
            image,
            {
                "name": name,
                "colormap": "gray",
                "contrast_limits": _contrast_limits(image),
                **common,
            },
            "image",
        ),
        (labels, {"name": f"{name} ground truth", "opacity": 0.5, **common}, "labels"),
    ]


def make_nuclei() -> list[tuple]:
    """Widefield fluorescent nuclei, 512x512 uint16, with int32 instance labels (2D)."""
    image, labels = fluorescent_nuclei(seed=0)
    return _pair(image, labels, "nuclei (synthetic)")


def make_cells() -> list[tuple]:
    """Phase-contrast cells in colonies, 512x512 uint16, with int32 instance labels (2D)."""
    image, labels = phase_contrast_cells(seed=0)
    return _pair(image, labels, "cells (synthetic)")


def make_nuclei3d() -> list[tuple]:
    """Fluorescent nuclei z-stack, 32x128x128 (ZYX) uint16, with int32 instance labels.

    The voxels are anisotropic: the Z step is twice the XY pixel size, so both layers get
    ``scale=(2.0, 1.0, 1.0)`` and the nuclei look round in napari's 3D view.
    """
    image, labels = nuclei_3d(seed=0)
    return _pair(image, labels, "nuclei 3D (synthetic)", scale=(2.0, 1.0, 1.0))
