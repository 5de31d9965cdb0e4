"""Reading image files: zarr stores, TIFF, NPY and whatever scikit-image reads.

:func:`open_image_file` opens a file without reading its pixels where the format allows (block-wise
inference reads windows of it); :func:`read_image` reads one whole for one-piece work, with the
messages of the command line. Whether a file says its last axis is colour (an RGB TIFF, a PNG)
is :func:`napari_unet.io.marks_rgb`'s rule, re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import COLOUR_FORMATS, marks_rgb

__all__ = ["COLOUR_FORMATS", "ZARR_SUFFIX", "TIFF_SUFFIXES", "is_image_input", "marks_rgb", "open_image_file",
           "read_image", "read_whole"]

ZARR_SUFFIX = ".zarr"
TIFF_SUFFIXES = (".tif", ".tiff")


def _is_zarr_array(data) -> bool:
    return type(data).__module__.startswith("zarr") and hasattr(data, "chunks") and hasattr(data, "shape")


def is_image_input(path: Path) -> bool:
    """A file, or a zarr store (a folder)."""
    return path.is_file() or (path.is_dir() and path.suffix.lower() == ZARR_SUFFIX)


def open_image_file(path: str | os.PathLike):
    """An image file opened without reading its pixels where the format allows; zarr arrays are
    returned as they are (no dask in worker tasks).

    * ``.zarr`` folders: the array (or, for a group, its only array or the first level of an
      OME-Zarr multiscale image).
    * ``.tif`` / ``.tiff``: memory-mapped when the pixels are stored uncompressed and contiguous,
      else a zarr array through ``tifffile``'s zarr interface (read tile by tile or strip by strip).
    * ``.npy``: memory-mapped.
    * anything else (PNG, JPEG...): read whole with scikit-image.

    Raises ``ValueError`` naming the file and the problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX or path.is_dir():
        return _open_zarr(path)
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    try:
        return _read_other(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the {'array' if suffix == '.npy' else 'image'} ({exc}).") from None


def _open_zarr(path: Path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: cannot open it as zarr ({exc}).") from None
    if hasattr(node, "shape"):
        return node
    # a group: its one array, or the full-resolution level of an OME-Zarr image
    multiscales = node.attrs.get("multiscales") if hasattr(node, "attrs") else None
    keys = sorted(node.array_keys())
    if multiscales:
        key = multiscales[0]["datasets"][0]["path"]
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise ValueError(f"{path}: this zarr group holds {len(keys)} arrays ({', '.join(keys) or 'none'}): "
                         "give the path of one of them, e.g. " f"{path / (keys[0] if keys else 'array')}.")
    return node[key]


def _open_tiff(path: Path):
    import tifffile

    try:
        return tifffile.memmap(str(path), mode="r")
    except (ValueError, OSError):  # compressed or tiled: go through tifffile's zarr store
        pass
    import zarr

    try:
        return zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the image ({exc}).") from None


def _read_other(path: Path):
    """An ``.npy`` file memory-mapped (never unpickled), anything else read by scikit-image."""
    if path.suffix.lower() == ".npy":
        return np.load(str(path), mmap_mode="r", allow_pickle=False)
    from skimage.io import imread

    return imread(str(path))


def read_whole(path: str | os.PathLike) -> np.ndarray:
    """An image file read into memory (for images that fit; see :func:`open_image_file`)."""
    data = open_image_file(path)
    return np.array(data[...]) if _is_zarr_array(data) else np.array(data)


def read_image(path: str | os.PathLike):
    """An image file for one-piece work (the command line's ``predict``, ``train``, ``evaluate``):
    a zarr store read whole, a TIFF read whole, an ``.npy`` memory-mapped (so that one too large
    for memory is refused before it is read), anything else read by scikit-image.

    Raises ``ValueError`` ``"<path>: ..."``: no such file, a file that cannot be read (corrupt,
    truncated, unsupported, a pickled ``.npy``), no pixel data.
    """
    path = Path(path)
    if not is_image_input(path):
        raise ValueError(f"{path}: no such file")
    try:
        if path.is_dir():  # a .zarr store
            image = read_whole(path)
        elif path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            image = tifffile.imread(path)
        else:
            image = _read_other(path)
    except Exception as exc:  # a corrupt or unsupported image file
        if "mmap length is greater than file size" in str(exc):
            exc = "the file is shorter than its header says: truncated?"
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    if image.size == 0:
        raise ValueError(f"{path}: cannot read the image (no pixel data: the file is empty or corrupt)")
    return image
