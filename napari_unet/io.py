"""Files written so that a crash never leaves a half-written one (no torch, no Qt)."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

#: A temporary file of :func:`atomic_write` older than this was left by a killed process.
STALE_TEMP_SECONDS = 3600.0


@lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask can only be read by setting it: do it once, not on every write, because another
    # thread creating a file in between would get the wrong permissions
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` makes for ``path`` (``.<name>.<random>.tmp``):
    normally none; a process killed in the middle of a write leaves one behind. They never end
    in the target's suffix, so no listing of ``*.safetensors`` or ``*.tif`` mistakes one for a
    real file."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers (old enough that no live
    writer can still own them)."""
    now = time.time()
    for tmp in temp_files(path):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: harmless either way


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, fsync it, then
    rename it over ``path`` (and fsync the folder). A crash or kill at any point leaves either
    the previous file or the new one, never a mix; the temporary file is removed on errors
    (and, when a killed process left one behind, by a later write once it is an hour old)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Best effort: Windows cannot open a folder, and some network file
    systems refuse to fsync one; the new file is in place either way, so this must not fail the write."""
    if os.name == "nt":
        return
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_tif(path: str | os.PathLike, data) -> Path:
    """Atomic zlib-compressed TIFF write."""
    import tifffile

    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib"))


#: file types whose 3 or 4 values per pixel are colour by the format itself
COLOUR_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def marks_rgb(path: str | os.PathLike, channel_axis: int | None = None) -> bool:
    """True when the file says its last axis is colour and no channel axis was chosen instead: a
    TIFF whose photometric interpretation is RGB (3 or 4 samples per pixel), or a PNG / JPEG / BMP
    image in RGB(A) mode (read from the header only). Arrays with no such record (``.npy``, zarr,
    a grey TIFF) are never called colour here: a last axis of 3 there is ambiguous, and needs
    ``--channel-axis``."""
    if channel_axis is not None or not isinstance(path, (str, os.PathLike)):
        return False
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff") and path.is_file():
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel in (3, 4)
        if suffix in COLOUR_FORMATS:
            from PIL import Image  # scikit-image's own image reader

            with Image.open(path) as image:
                return image.mode in ("RGB", "RGBA", "RGBX")
    except Exception:  # unreadable: the reader says so, not this check
        return False
    return False
