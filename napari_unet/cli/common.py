"""What every command shares: the one-line usage error, the progress bar, and reading the user's
images and masks (through :mod:`napari_unet.inputs`, the one module that reads images and checks
labels) with their errors made usage errors."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

EXIT_USAGE = 2
#: Image files a folder of training images (or masks) is made of.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


class UsageError(Exception):
    """A problem with the command's input, reported as one line and exit code 2."""


@contextmanager
def usage_errors(*errors: type[BaseException]):
    """Turn ``errors`` raised inside into a :class:`UsageError` with their message."""
    try:
        yield
    except errors as exc:
        raise UsageError(str(exc)) from None


def progress_printer(label: str):
    """``show(done, total, message)`` draws a one-line progress bar on a terminal (nothing in logs)."""
    last = [-1]

    def show(done: int, total: int, message: str = ""):
        pct = int(100 * done / max(total, 1))
        if pct != last[0] and sys.stderr.isatty():
            bar = "#" * (pct // 4)
            print(f"\r{label}: [{bar:<25s}] {pct:3d}% {message}", end="", file=sys.stderr, flush=True)
        last[0] = pct

    return show


def end_progress_line() -> None:
    """Move past a progress bar drawn on a terminal."""
    if sys.stderr.isatty():
        print(file=sys.stderr)


def is_input(path: Path) -> bool:
    """A file, or a zarr store (a folder)."""
    from ..inputs import is_image_input

    return is_image_input(path)


def read_image(path: Path):
    """An image file read whole (:func:`napari_unet.inputs.read_image`; ``.npy`` memory-mapped)."""
    from ..inputs import read_image as read

    with usage_errors(ValueError):
        return read(path)


def read_labels(path: Path, shape=None):
    """A mask or label file as integer ids, of ``shape`` when given (``"<path>: masks must ..."``)."""
    from ..inputs import LABEL_FILES, check_instance_labels

    labels = read_image(path)
    with usage_errors(ValueError):
        return check_instance_labels(labels, LABEL_FILES, what=str(path), shape=shape)


def pairs(images_dir: Path, masks_dir: Path, masks_label: str = "masks") -> list[tuple[Path, Path]]:
    """Files of ``images_dir`` matched by name with ``masks_dir``; UsageError on any mismatch."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"{images_dir}: no images (.tif, .png, .npy) in this folder")
    missing = [p.name for p in images if not (masks_dir / p.name).is_file()]
    if missing:
        raise UsageError(f"no {masks_label} with the name of {len(missing)} image(s) in {masks_dir}: "
                         f"{', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
    return [(p, masks_dir / p.name) for p in images]


def load_model(model):
    """A model (bundled name or file) loaded, a :class:`UsageError` for an unusable model file."""
    from ..modelfile import ModelFileError, load_model as load

    with usage_errors(ModelFileError):
        return load(model)
