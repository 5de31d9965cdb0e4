"""Reading images lazily and writing zarr stores, for :mod:`.large` and :mod:`.distributed`.

:func:`open_image` opens zarr, TIFF and NPY files without reading their pixels (through
:func:`napari_unet.inputs.open_image_file`, the one reader of image files);
:class:`SourcePlane` reads one window of one plane of any lazy array, arranging its channels as
a single pass would; the zarr helpers create stores, check output paths before any work
(:func:`_check_output`; :func:`check_apart`: never over the input) and move finished stores into
place (:func:`_commit`), so that nothing half-written ever carries a final name.
"""

from __future__ import annotations

import mmap
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from ..inputs import prepare_image
from ..inputs.files import ZARR_SUFFIX, _is_zarr_array, open_image_file, read_whole

__all__ = ["ZARR_SUFFIX", "as_lazy", "check_apart", "open_image", "read_whole", "source_path", "SourcePlane",
           "write_zarr"]

#: Largest zarr chunk side (2D / 3D); chunks always divide the block so no two blocks share one.
MAX_CHUNK_2D = 1024
MAX_CHUNK_3D = 128


# -- reading images lazily ----------------------------------------------------------------------
def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def as_lazy(data):
    """``data`` as an array that reads only what is sliced: zarr arrays become dask arrays (numpy,
    memory-mapped and dask arrays are returned as they are)."""
    if _is_zarr_array(data):
        import dask.array as da

        return da.from_array(data, chunks=data.chunks, name=False)
    return data


def open_image(path: str | os.PathLike):
    """Open an image without reading its pixels where the format allows.

    Returns a dask array for zarr stores and compressed or tiled TIFFs, a memory map for
    uncompressed TIFFs and NPY files, a numpy array for other formats. In detail:

    * ``.zarr`` folders: the array (or, for a group, its only array or the first level of an
      OME-Zarr multiscale image), as a dask array.
    * ``.tif`` / ``.tiff``: memory-mapped when the pixels are stored uncompressed and contiguous,
      else read block by block through ``tifffile``'s zarr interface (tiles or strips).
    * ``.npy``: memory-mapped.
    * anything else (PNG, JPEG...): read whole with scikit-image.

    Raises ``ValueError`` naming the file and the problem. (The reading itself is
    :func:`napari_unet.inputs.open_image_file`'s, shared with the command line.)
    """
    return as_lazy(open_image_file(path))


_OPENED: dict[tuple, object] = {}
_OPENED_LOCK = threading.Lock()


def _open_source(source):
    """The image of a task: a path is opened once per process (workers reopen it themselves), and
    again when the file changed."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        stamps = [p.stat().st_mtime_ns for p in (path, path / "zarr.json", path / ".zarray") if p.exists()]
        key = (str(source), tuple(stamps))
        with _OPENED_LOCK:
            if key not in _OPENED:
                if len(_OPENED) >= 8:
                    _OPENED.pop(next(iter(_OPENED)))
                _OPENED[key] = open_image_file(path)
            return _OPENED[key]
    return source


def _drop_mapped_pages(data) -> None:
    """Let the kernel take back the pages of a memory-mapped file that a block touched.

    Pages of a file mapping count in the resident memory (RSS) of the process as long as they stay
    mapped; without this, reading every block of a 20000² memory-mapped TIFF would leave all of it
    resident. The data stay in the page cache, so nothing is read twice from disk in practice.
    Only shared or read-only mappings: dropping a copy-on-write page would lose a user's edits.
    """
    mm = getattr(data, "_mmap", None)  # np.memmap (and its views) keep the mmap object here
    if mm is None or getattr(data, "mode", "c") not in ("r", "r+") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


def _shape_probe(data):
    """A lazy stand-in with ``data``'s shape and dtype: :func:`prepare_image` checks it reading nothing."""
    import dask.array as da

    return da.empty(tuple(data.shape), dtype=data.dtype, chunks=tuple(data.shape))


class SourcePlane:
    """One plane of an image as a ``(C, *spatial)`` array whose slices read only that region.

    Slicing ``[:, y0:y1, x0:x1]`` reads that window of the source (numpy, memory-mapped, dask or
    zarr), then arranges channels with :func:`~.inputs.prepare_image` on the small window, so a
    colour image turns grey exactly as it does in a single pass.
    """

    def __init__(self, source, plane: int, spatial_dims: int, in_channels: int, channel_axis: int | None,
                 rgb: bool):
        self.source = source
        self.spatial_dims, self.in_channels, self.rgb = spatial_dims, in_channels, rgb
        ndim = len(source.shape)
        if rgb:
            channel_axis = ndim - 1
        self.channel_axis = None if channel_axis is None else channel_axis % ndim
        others = [a for a in range(ndim) if a != self.channel_axis]
        self.spatial_axes = others[len(others) - spatial_dims:]
        plane_axes = others[: len(others) - spatial_dims]
        plane_shape = tuple(source.shape[a] for a in plane_axes)
        idx = np.unravel_index(plane, plane_shape) if plane_axes else ()
        self.plane_index = dict(zip(plane_axes, (int(i) for i in idx)))
        probe = prepare_image(_shape_probe(source), spatial_dims, in_channels, channel_axis, rgb)  # checks only
        self.shape = (probe.channels,) + probe.spatial_shape
        self.warnings = list(probe.warnings)
        # the window's own channel axis once the plane axes are taken out
        self._window_channel_axis = None if self.channel_axis is None else \
            self.channel_axis - sum(1 for a in plane_axes if a < self.channel_axis)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = tuple(index)
        if len(index) != self.ndim or index[0] != slice(None):
            raise IndexError("SourcePlane takes [:, spatial slices...] only")
        spatial = dict(zip(self.spatial_axes, index[1:]))
        src = tuple(self.plane_index.get(a, spatial.get(a, slice(None))) for a in range(len(self.source.shape)))
        window = self.source[src]
        if hasattr(window, "compute"):  # dask: this thread only (inside a cluster task too)
            window = window.compute(scheduler="sync")
        window = np.array(window)  # a copy: a memory-mapped window no longer pins the file's pages
        _drop_mapped_pages(self.source)
        if self.channel_axis is None:
            return window[None]  # what prepare_image does to an image without channels
        return np.asarray(prepare_image(window, self.spatial_dims, self.in_channels,
                                        self._window_channel_axis if not self.rgb else None, self.rgb).data)


# -- zarr outputs --------------------------------------------------------------------------------
def _create_array(path: Path, shape, chunks, dtype, attrs: dict | None = None):
    import zarr

    array = zarr.create(shape=tuple(int(s) for s in shape), chunks=tuple(int(c) for c in chunks), dtype=dtype,
                        store=str(path), fill_value=0, overwrite=True)
    if attrs:
        array.attrs.update(attrs)
    return array


def _open_array(path: str | os.PathLike, mode: str = "r+"):
    import zarr

    return zarr.open_array(store=str(path), mode=mode)


def _check_output(path: Path) -> None:
    """Fail before any work when the output would replace something that is not a zarr store."""
    if path.suffix.lower() != ZARR_SUFFIX:
        raise ValueError(f"{path}: a zarr output needs a name ending in .zarr, e.g. {path.with_suffix('.zarr')}.")
    if path.exists() and not _is_zarr_store(path):
        raise ValueError(f"{path} exists and is not a zarr store: choose another output name, or remove it.")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {path.parent}: {exc.strerror}.") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write to {path.parent}: choose a writable output folder.")


def source_path(source) -> Path | None:
    """The file or folder an input is read from: a path as given, a zarr array's folder in a local
    store; None for arrays in memory (and any other source)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    store = getattr(source, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)  # zarr 3 / zarr 2 folder stores
    if _is_zarr_array(source) and root is not None:
        return Path(root) / str(getattr(source, "path", "") or "")
    return None


def _identities(path: Path) -> set:
    """(device, inode) of ``path`` and of every existing folder above it (links resolved)."""
    found = set()
    real = Path(os.path.realpath(path))
    for p in (real, *real.parents):
        try:
            st = os.stat(p)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def check_apart(output: Path, source) -> None:
    """Refuse an output that is the input, lies inside it or holds it (the output store is
    replaced at the end, and the input with it). Links and other names of one folder count as
    that folder (compared by device and inode)."""
    src = source_path(source)
    if src is None or not src.exists():
        return
    st = os.stat(src)
    src_id = (st.st_dev, st.st_ino)
    if src_id in _identities(output):
        raise ValueError(f"{output} would overwrite the input {src}: choose another output path.")
    if output.exists():
        st = os.stat(output)
        if (st.st_dev, st.st_ino) in _identities(src):
            raise ValueError(f"{output} holds the input {src}, which writing it would remove: choose another "
                             "output path.")


def _commit(tmp: Path, final: Path) -> None:
    """Move a finished store into place; an older store of that name is replaced only now."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_zarr(path: str | os.PathLike, data: np.ndarray, chunks: Sequence[int] | None = None,
               attrs: dict | None = None) -> Path:
    """Write an in-memory array as a zarr store at ``path`` (atomically: beside it, then renamed)."""
    path = Path(path)
    _check_output(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if chunks is None:
            chunks = tuple(1 if i < data.ndim - 2 else min(n, MAX_CHUNK_2D) for i, n in enumerate(data.shape))
        array = _create_array(tmp, data.shape, chunks, data.dtype, attrs)
        array[...] = data
        _commit(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
