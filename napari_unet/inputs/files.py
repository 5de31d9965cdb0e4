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


#: The files that make a folder a zarr array or group (zarr v2, v3).
ZARR_METADATA = (".zarray", ".zgroup", "zarr.json")


def is_image_input(path: Path) -> bool:
    """A file, or a zarr store (a folder): one named ``.zarr``, one with zarr metadata (an array
    such as ``grp.zarr/raw``, whatever its name), or any folder inside a ``.zarr`` one."""
    path = Path(path)
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    return (any((path / name).is_file() for name in ZARR_METADATA)
            or any(p.suffix.lower() == ZARR_SUFFIX for p in (path, *path.absolute().parents)))


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
    attrs = node.attrs if hasattr(node, "attrs") else {}
    # OME-Zarr up to 0.4 keeps "multiscales" at the top of the attributes, 0.5 under "ome"
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
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

    if planar_rgb(path):  # colour planes first: read whole, colour last (as the file says it is colour)
        return _read_tiff(path)
    try:
        return tifffile.memmap(str(path), mode="r")
    except (ValueError, OSError):  # compressed or tiled: go through tifffile's zarr store
        pass
    import zarr

    try:  # the full resolution of the first series (a pyramidal OME-TIFF's store is a group of levels)
        return zarr.open(tifffile.imread(str(path), aszarr=True, series=0, level=0), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the image ({exc}).") from None


def planar_rgb(path: Path) -> bool:
    """An RGB TIFF that stores its colour planes one after the other (``planarconfig`` separate):
    tifffile gives it colour first."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _planar(tif)
    except Exception:  # unreadable: the reader says so
        return False


def _planar(tif) -> bool:
    import tifffile

    page = tif.pages.first
    return (page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel in (3, 4)
            and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE)


def _read_tiff(path: Path) -> np.ndarray:
    """A TIFF read whole (one opening of the file); an RGB one with its colour last (as every
    colour image here)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        image = tif.asarray()
        return np.moveaxis(image, -3, -1) if _planar(tif) else image


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
            image = _read_tiff(path)
        else:
            image = _read_other(path)
    except Exception as exc:  # a corrupt or unsupported image file
        if "mmap length is greater than file size" in str(exc):
            exc = "the file is shorter than its header says: truncated?"
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    if image.size == 0:
        raise ValueError(f"{path}: cannot read the image (no pixel data: the file is empty or corrupt)")
    return image
