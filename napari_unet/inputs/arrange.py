"""Images arranged for a network: data types it can read, channels first, colour to grey.

Prediction arranges any image as ``(*planes, C, *spatial)`` (:func:`prepare_image`); training
takes an image with its labels as ``(C, *labels.shape)`` (:func:`image_channels_first`). Both
follow the same rules: colour is 3 or 4 values (RGB / RGBA), and a colour image given to a
one-channel network becomes grey, the mean of R, G and B (:func:`becomes_grey`,
:func:`colour_to_grey`). Nothing here loads a lazy (dask) array whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .files import _is_zarr_array

#: How each front end names the channel axis, for messages that must work in all of them.
CHANNEL_AXIS_HINT = "the channel axis (channel_axis= in Python, --channel-axis on the command line, " \
                    "'Channel axis' in the Segment widget)"


def check_image_dtype(dtype, what: str = "image") -> np.dtype:
    """``dtype`` if a network can read it (bool, integers, floats), else a ``ValueError`` saying
    how to convert it."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return dtype
    if dtype.kind == "c":
        fix = "take its magnitude (np.abs) or real part first"
    elif dtype.kind in "mM":
        fix = "these are times or dates, not intensities: convert the data to numbers first"
    elif dtype.kind in "OSUV":
        fix = "it holds Python objects, text or raw bytes: convert it to a numeric array (e.g. .astype('float32'))"
    else:
        fix = "convert it to integers or floats"
    raise ValueError(f"The {what} has data type {dtype}, which cannot be segmented: {fix}.")


# -- colour -----------------------------------------------------------------------------------
def looks_rgb(shape: tuple[int, ...]) -> bool:
    """A last axis of 3 or 4 values behind two image-sized axes: colour, not a 3-pixel-wide stack."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) >= 16


def colour_last(image_shape: Sequence[int], labels_shape: Sequence[int]) -> bool:
    """Whether an image of ``image_shape`` holds its 3 or 4 colour channels last (RGB / RGBA, as
    napari and image files hold them) behind labels of ``labels_shape`` (and is not already
    channels first)."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    return len(image_shape) == len(labels_shape) + 1 and image_shape[:-1] == labels_shape \
        and image_shape[-1] in (3, 4) and image_shape[1:] != labels_shape


def becomes_grey(channels: int, in_channels: int) -> bool:
    """Whether an image of ``channels`` channels is converted to grey for a network of
    ``in_channels``: a colour image (3 or 4 channels) for a one-channel network."""
    return in_channels == 1 and channels in (3, 4)


def colour_to_grey(data, keepdims: bool = True, axis: int = 0):
    """The grey float32 of a colour image whose channels (3 or 4) are on ``axis``: the mean of
    R, G and B (alpha ignored); that axis kept with one channel with ``keepdims``. A dask array
    stays lazy."""
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    return data[(slice(None),) * axis + (slice(0, 3),)].mean(axis=axis, keepdims=keepdims, dtype=np.float32)


# -- training: an image and its labels ----------------------------------------------------------
def as_channels_first(image: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """An image ``(*spatial)`` or ``(C, *spatial)`` as ``(C, *spatial)``, ``spatial_dims`` 2 or 3."""
    image = np.asarray(image)
    if image.ndim == spatial_dims:
        return image[None]
    if image.ndim == spatial_dims + 1:
        return image
    axes = "(H, W) or (C, H, W)" if spatial_dims == 2 else "(D, H, W) or (C, D, H, W)"
    raise ValueError(f"{spatial_dims}D training images must be {axes}, got shape {image.shape}: slice the data "
                     "to one plane (or volume) per image, channels first.")


def image_channels_first(image, labels: np.ndarray, name: str = "") -> np.ndarray:
    """``image`` as ``(C, *labels.shape)`` (colour last, as image files hold it, is moved first),
    or a ``ValueError`` that says the labels do not fit it (or its type cannot be trained on)."""
    where = f" of training image {name}" if name else ""
    image = np.asarray(image)
    given, which = image.shape, f"training image {name}" if name else "the training image"
    check_image_dtype(image.dtype, which.replace("the ", ""))
    if colour_last(image.shape, labels.shape):
        image = np.moveaxis(image, -1, 0)  # colour last (RGB / RGBA) -> channels first
    chw = as_channels_first(image, labels.ndim)
    if labels.shape != chw.shape[1:]:
        raise ValueError(f"The labels{where} {labels.shape} do not match the image's size {chw.shape[1:]} (image "
                         f"shape {given}): each image needs labels of its own height and width (and depth), "
                         "drawn on that image.")
    return chw


# -- prediction: any image as (*planes, C, *spatial) ---------------------------------------------
@dataclass
class PreparedImage:
    """An image arranged for prediction; ``data`` may be numpy, memory-mapped or dask."""

    data: object
    n_plane_axes: int
    spatial_dims: int
    warnings: list[str] = field(default_factory=list)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[: self.n_plane_axes])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[-self.spatial_dims:])

    @property
    def channels(self) -> int:
        return int(self.data.shape[self.n_plane_axes])

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64))

    def plane(self, index: int):
        """The ``(C, *spatial)`` array of plane ``index`` (row-major over the plane axes)."""
        idx = np.unravel_index(index, self.plane_shape) if self.n_plane_axes else ()
        return self.data[tuple(int(i) for i in idx)]


def prepare_image(data, spatial_dims: int = 2, in_channels: int = 1, channel_axis: int | None = None,
                  rgb: bool = False) -> PreparedImage:
    """Arrange ``data`` as ``(*planes, C, *spatial)`` for a network with ``in_channels`` inputs.

    ``rgb=True`` (napari's RGB layers) means the last axis holds 3 or 4 colour channels;
    ``channel_axis`` names any other channel axis. A colour image given to a one-channel network
    is converted to grey (mean of R, G, B). Raises ``ValueError`` with what to do on bad input:
    unreadable data types, too few or too many axes, an RGB-looking image with no channel axis,
    empty images and channel counts the model cannot take. Nothing is copied or computed here
    (views only, dask stays lazy, a zarr array becomes a dask array over its chunks) except the
    grey conversion of colour images.
    """
    data = _as_array(data)
    check_image_dtype(data.dtype)
    warnings: list[str] = []
    original_shape = tuple(int(n) for n in data.shape)
    if rgb:
        channel_axis = _rgb_axis(original_shape)
    if channel_axis is not None:
        data, channel_axis = _channels_before_spatial(data, original_shape, spatial_dims, channel_axis)
        if data.shape[-spatial_dims - 1] == 4 and rgb:
            data = data[(slice(None),) * (data.ndim - spatial_dims - 1) + (slice(0, 3),)]
            warnings.append("The alpha channel of the RGBA image was ignored.")
    else:
        data = _with_channel_axis(data, original_shape, spatial_dims)
    n_plane_axes = _plane_axes(data, original_shape, spatial_dims)
    if any(s == 0 for s in data.shape):
        raise ValueError(f"The image is empty (shape {original_shape}): it has no pixels to segment; "
                         "choose an image with data.")
    data = _fit_channels(data, n_plane_axes, in_channels, channel_axis, rgb, warnings)
    return PreparedImage(data=data, n_plane_axes=n_plane_axes, spatial_dims=spatial_dims, warnings=warnings)


def _as_array(data):
    """``data`` itself when it is an array (numpy, memory-mapped, dask); a zarr array as a dask
    array over its chunks (zarr arrays cannot be transposed or take new axes); else as numpy."""
    if _is_zarr_array(data):
        import dask.array as da

        return da.from_array(data, chunks=data.chunks, name=False)
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return data
    try:
        return np.asarray(data)
    except ValueError:  # ragged nested lists
        raise ValueError("The image is not a regular array (its rows differ in length): give a numpy or dask "
                         "array with one value per pixel.") from None


def _kind(spatial_dims: int) -> str:
    return "2D images (Y, X) or stacks of them (Z or T, Y, X)" if spatial_dims == 2 else "3D volumes (Z, Y, X)"


def _rgb_axis(shape: tuple[int, ...]) -> int:
    """The colour axis of an image napari calls RGB: its last, which must hold 3 or 4 values."""
    ndim = len(shape)
    if ndim < 3 or shape[-1] not in (3, 4):
        found = f"has {shape[-1]}" if ndim >= 3 else "has no colour axis"
        raise ValueError(f"An RGB image needs 3 (RGB) or 4 (RGBA) values on its last axis; this one (shape "
                         f"{shape}) {found}: untick 'rgb' for the layer (rgb=False) and choose "
                         f"{CHANNEL_AXIS_HINT} instead.")
    return ndim - 1


def _channels_before_spatial(data, shape: tuple[int, ...], spatial_dims: int, channel_axis):
    """``(data with channel_axis moved just before the spatial axes, channel_axis as 0..ndim-1)``."""
    ndim = len(shape)
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ValueError(f"The channel axis must be an axis number, got {channel_axis!r}: give an integer such "
                         "as 0 or -1, or None for an image without channels.")
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"Channel axis {channel_axis} does not exist in an image with {ndim} axes (shape "
                         f"{shape}): choose an axis from {-ndim} to {ndim - 1}, or none.")
    channel_axis = int(channel_axis) % ndim
    if ndim - 1 < spatial_dims:
        raise ValueError(f"This {spatial_dims}D model needs {spatial_dims} image axes besides the channel axis; "
                         f"the image has shape {shape} with channels on axis {channel_axis}: "
                         f"choose no channel axis{' or a 2D model' if spatial_dims == 3 else ''}.")
    order = [a for a in range(ndim) if a != channel_axis]
    order.insert(ndim - 1 - spatial_dims, channel_axis)
    return data.transpose(order), channel_axis


def _with_channel_axis(data, shape: tuple[int, ...], spatial_dims: int):
    """An image without channels with a channel axis of one inserted before its spatial axes."""
    ndim = len(shape)
    if ndim < spatial_dims:
        if spatial_dims == 3:
            fix = "choose a 2D model (e.g. 'unet'), or give a stack of planes (Z, Y, X)"
        else:
            fix = "give a 2D array (reshape it into rows and columns)"
        raise ValueError(f"The image has {ndim} dimension{'s' if ndim != 1 else ''} (shape {shape}) but "
                         f"this {spatial_dims}D model needs at least {spatial_dims} axes: it segments "
                         f"{_kind(spatial_dims)}; {fix}.")
    if looks_rgb(shape):
        raise ValueError(f"The image (shape {shape}) looks like a colour image: its last axis holds "
                         f"{shape[-1]} values. Mark it as {CHANNEL_AXIS_HINT}, e.g. -1, or pass "
                         "rgb=True (napari: an RGB layer).")
    return data[(slice(None),) * (data.ndim - spatial_dims) + (None,)]


def _plane_axes(data, shape: tuple[int, ...], spatial_dims: int) -> int:
    """How many leading (plane) axes ``data`` has: at most one (Z or T) for 2D models, none for 3D."""
    n_plane_axes = data.ndim - spatial_dims - 1
    if n_plane_axes > (1 if spatial_dims == 2 else 0):
        raise ValueError(
            f"The image has {data.ndim - 1} axes besides channels (shape {shape}); this {spatial_dims}D model "
            f"segments {_kind(spatial_dims)}. Slice the data to fewer axes first (one time point or channel, e.g. "
            f"image[0]), or mark {CHANNEL_AXIS_HINT} if one axis holds colours.")
    return n_plane_axes


def _fit_channels(data, n_plane_axes: int, in_channels: int, channel_axis, rgb: bool, warnings: list[str]):
    """``data``'s channels as the network takes them: as they are, or colour made grey for a
    one-channel network; other mismatches raise."""
    channels = data.shape[n_plane_axes]
    if channels == in_channels:
        return data
    if becomes_grey(channels, in_channels) and (rgb or channel_axis is not None):
        warnings.append("The colour image was converted to grey for this one-channel model.")
        return colour_to_grey(data, axis=n_plane_axes)
    if channels == 1:
        raise ValueError(f"This model needs {in_channels} channels but the image has none marked: mark an axis "
                         f"with {in_channels} values as {CHANNEL_AXIS_HINT}, or choose a one-channel model.")
    raise ValueError(f"This model needs {in_channels} input channel(s) but the image has {channels} on axis "
                     f"{channel_axis}: choose a model trained on {channels}-channel images, or the right "
                     "channel axis.")
