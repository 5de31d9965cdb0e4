"""The labelled microscopy data the bundled models are trained and scored on, with fixed splits.

A *source* is one or more folders of ``images/NAME.tif`` + ``masks/NAME.tif`` (integer instance
labels, 0 = background), such as the project's ``../shared/data/nuclei_dsb2018`` and
``nuclei_dsb2018_more`` (grey fluorescent nuclei) or ``cells_phase_usiigaci`` and
``cells_phase_usiigaci_more`` (phase-contrast cells). :data:`SOURCES` names them and says
which images are held out: the split is fixed (a list of names plus a seeded draw from the rest),
so every script and benchmark scores on the same images, and never on what a bundled model was
trained on.

A fresh user machine does not have these folders; nothing in the plugin needs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: where the project's data folders live in a checkout (``<repo>/../shared/data``)
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Source:
    """One kind of image: its folders, how its masks are cleaned, and its held-out images.

    ``held_out`` names images that are always held out; ``held_out_fraction`` of the other
    images (at least one) is drawn with ``numpy.random.default_rng(seed)`` from their sorted
    names and held out too, except the images of ``trained_before`` folders that ``held_out``
    does not name: the first bundled weights, which every bundled model started from, trained on
    them, so they are never scored (they train; the draw itself is unchanged).
    """

    name: str
    folders: tuple[str, ...]
    modality: str
    held_out: tuple[str, ...] = ()
    held_out_fraction: float = 0.2
    seed: int = 0
    min_piece: int = 0  # connected pieces of an id below this many pixels are dropped (stray fragments)
    trained_before: tuple[str, ...] = ()  # folders the first bundled weights trained on (but for held_out)


SOURCES = {
    "nuclei": Source(
        "nuclei", ("nuclei_dsb2018", "nuclei_dsb2018_more"), "grey fluorescent nuclei (DSB2018)",
        # the bundled nuclei-only unet's own held-out images: they stay held out
        held_out=("0ddd8deaf1696db6", "1db1cddf28e305c9", "2817299fd3b88670", "2a2032c4ed78f3fc",
                  "449a9c32e53a37c8", "56d0da5b663ddd49", "88d5a03f8ecd459f", "ad9d305cbf193d42",
                  "c3bec1066aae20f4", "eb96fc6cbf6880bf", "f113626a04125d97", "f6cb37ebf29c2252"),
        held_out_fraction=0.2, trained_before=("nuclei_dsb2018",)),
    "cells": Source(
        "cells", ("cells_phase_usiigaci", "cells_phase_usiigaci_more"), "phase-contrast cells (Usiigaci)",
        # the first folder's 8 frames (the fine-tuning benchmark scores there) + 3 drawn frames
        # (the fine-tuning benchmark's "corrected" frames)
        held_out=("set01", "set05", "set09", "set13", "set17", "set21", "set25", "set29"),
        held_out_fraction=0.12, min_piece=50),
}


def data_root() -> Path:
    """``$NAPARI_UNET_DATA`` if set, else the checkout's ``../shared/data``."""
    return Path(os.environ.get("NAPARI_UNET_DATA", DEFAULT_ROOT))


def image_names(source: Source, root: Path | None = None, folders: tuple[str, ...] | None = None) -> list[str]:
    """The sorted image names of ``source`` (of ``folders`` only, when given)."""
    root = data_root() if root is None else Path(root)
    names = []
    for folder in source.folders if folders is None else folders:
        names += [p.stem for p in sorted((root / folder / "images").glob("*.tif"))]
    return sorted(names)


def split(source: Source, root: Path | None = None) -> tuple[list[str], list[str]]:
    """``(training names, held-out names)`` of ``source``, both sorted; the same on every machine
    that has the same files."""
    names = image_names(source, root)
    fixed = [n for n in names if n in set(source.held_out)]
    rest = [n for n in names if n not in set(source.held_out)]
    n_draw = max(1, round(source.held_out_fraction * len(rest))) if rest else 0
    drawn = np.random.default_rng(source.seed).permutation(rest)[:n_draw].tolist()
    seen = set(image_names(source, root, source.trained_before)) if source.trained_before else set()
    held = sorted(fixed + [n for n in drawn if n not in seen])
    return [n for n in names if n not in set(held)], held


def remove_small_pieces(labels: np.ndarray, min_piece: int) -> np.ndarray:
    """Drop the connected pieces of every id that are smaller than ``min_piece`` pixels
    (memory and time follow the image, not the number of ids)."""
    from scipy import ndimage as ndi

    if min_piece <= 0:
        return labels
    # a piece = pixels of one id within one connected region of foreground (two pieces of an id
    # joined only through another id's pixels count as one: rare, and harmless here)
    pieces, _ = ndi.label(labels > 0)
    key = pieces.astype(np.int64) * (int(labels.max()) + 1) + labels
    _, inverse, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    small = (counts < min_piece)[inverse].reshape(labels.shape)
    out = labels.copy()
    out[small & (labels > 0)] = 0
    return out


def read_pair(source: Source, name: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels int32)`` of one image of ``source``."""
    import tifffile

    root = data_root() if root is None else Path(root)
    for folder in source.folders:
        path = root / folder / "images" / f"{name}.tif"
        if path.is_file():
            labels = tifffile.imread(root / folder / "masks" / f"{name}.tif").astype(np.int32)
            return tifffile.imread(path), remove_small_pieces(labels, source.min_piece)
    raise FileNotFoundError(f"{name}.tif is in none of {', '.join(source.folders)} under {root}.")


def load(source: str | Source, which: str = "train", root: Path | None = None) -> dict[str, tuple]:
    """``{name: (image, labels)}`` of the training (``which="train"``) or held-out
    (``"held_out"``) images of a source; empty when its folders are not on this machine."""
    source = SOURCES[source] if isinstance(source, str) else source
    train, held = split(source, root)
    names = {"train": train, "held_out": held}[which]
    return {n: read_pair(source, n, root) for n in names}


def available(source: str | Source, root: Path | None = None) -> bool:
    source = SOURCES[source] if isinstance(source, str) else source
    return bool(image_names(source, root))
