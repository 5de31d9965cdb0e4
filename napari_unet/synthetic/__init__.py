"""Deterministic synthetic microscopy with exact instance masks.

Every public generator returns ``(image, labels)``:

* ``image``  -- ``uint16`` camera counts, the simulated acquisition;
* ``labels`` -- ``int32`` instance mask of the same shape, ``0`` for background and
  ``1..N`` for the objects, every id present (consecutive).

The masks are exact: a pixel carries an object's id if and only if the object was drawn
there (before blur and noise). Where two objects overlap, the one drawn later ("on top")
owns the pixel, so the mask is always a partition of the image.

Everything is driven by one ``numpy.random.default_rng(seed)`` per call: the same
arguments give bit-identical outputs, and no global random state is read or changed.
Only numpy and scipy are used, so the module is safe to import anywhere (no torch, Qt or
napari).

Modules: :mod:`.blobs` (the star-convex shapes), :mod:`.placement` (free, touching and
overlapping placement), :mod:`.optics` (illumination, textures, camera noise), :mod:`.nuclei`
and :mod:`.cells` (the generators).
"""

from __future__ import annotations

from .cells import phase_contrast_cells
from .nuclei import fluorescent_nuclei, nuclei_3d

__all__ = ["fluorescent_nuclei", "phase_contrast_cells", "nuclei_3d", "SAMPLES"]

SAMPLES = {
    "nuclei": fluorescent_nuclei,
    "cells": phase_contrast_cells,
    "nuclei3d": nuclei_3d,
}
