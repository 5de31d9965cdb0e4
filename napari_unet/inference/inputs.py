"""Check and arrange user images for a network, without loading lazy (dask) arrays whole.

An image becomes ``(*planes, C, *spatial)``: ``spatial`` has the network's 2 or 3 axes, ``C``
the channels it expects, and ``planes`` the leading axes (Z or T) that a 2D network predicts
one plane at a time. Normalisation statistics come from a strided subsample, so an 8192² or a
dask-backed image is never copied whole just to compute percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_STAT_SAMPLES = 2_000_000


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


def _is_lazy(data) -> bool:
    return hasattr(data, "compute") and hasattr(data, "chunks")


def prepare_image(data, spatial_dims: int = 2, in_channels: int = 1, channel_axis: int | None = None,
                  rgb: bool = False) -> PreparedImage:
    """Arrange ``data`` as ``(*planes, C, *spatial)`` for a network with ``in_channels`` inputs.

    ``rgb=True`` (napari's RGB layers) means the last axis holds 3 or 4 colour channels;
    ``channel_axis`` names any other channel axis. A colour image given to a one-channel network
    is converted to grey (mean of R, G, B). Raises ``ValueError`` with what to do on bad input.
    """
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == bool) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"Images of type {dtype} cannot be segmented: convert the layer to integers or floats.")
    warnings: list[str] = []
    original_shape = tuple(data.shape)
    if rgb:
        if data.shape[-1] not in (3, 4):
            raise ValueError(f"An RGB image needs 3 or 4 values on its last axis, this one has {data.shape[-1]}.")
        channel_axis = data.ndim - 1
    if channel_axis is not None:
        if not -data.ndim <= channel_axis < data.ndim:
            raise ValueError(f"Channel axis {channel_axis} does not exist in an image with {data.ndim} axes.")
        channel_axis %= data.ndim
        order = [a for a in range(data.ndim) if a != channel_axis]
        order.insert(data.ndim - 1 - spatial_dims, channel_axis)
        if data.ndim - 1 < spatial_dims:
            raise ValueError(f"This {spatial_dims}D network needs {spatial_dims} spatial axes besides the channel "
                             f"axis; the image has shape {tuple(data.shape)}.")
        data = data.transpose(order)
        if data.shape[-spatial_dims - 1] == 4 and rgb:
            data = data[(slice(None),) * (data.ndim - spatial_dims - 1) + (slice(0, 3),)]
            warnings.append("The alpha channel of the RGBA image was ignored.")
    else:
        if data.ndim < spatial_dims:
            raise ValueError(f"A {data.ndim}D array cannot be segmented by a {spatial_dims}D network: "
                             f"it needs at least {spatial_dims} axes (shape {tuple(data.shape)}).")
        data = data[(slice(None),) * (data.ndim - spatial_dims) + (None,)]
    n_plane_axes = data.ndim - spatial_dims - 1
    max_planes = 1 if spatial_dims == 2 else 0
    if n_plane_axes > max_planes:
        raise ValueError(
            f"The image has {data.ndim - 1} axes besides channels (shape {original_shape}); "
            f"a {spatial_dims}D network predicts {'2D images or 3D stacks (Z or T)' if spatial_dims == 2 else '3D volumes'}. "
            "Slice the data to fewer axes first, or mark the channel axis.")
    if any(s == 0 for s in data.shape):
        raise ValueError(f"The image is empty (shape {tuple(data.shape)}).")
    channels = data.shape[n_plane_axes]
    if channels != in_channels:
        if in_channels == 1 and channels in (3, 4) and (rgb or channel_axis is not None):
            data = data[(slice(None),) * n_plane_axes + (slice(0, 3),)].mean(axis=n_plane_axes, keepdims=True,
                                                                               dtype=np.float32)
            warnings.append("The colour image was converted to grey for this one-channel model.")
        elif channels == 1:
            raise ValueError(f"This model needs {in_channels} channels but the image has none marked: "
                             "choose the image's channel axis (or an image with that many channels).")
        else:
            raise ValueError(f"This model needs {in_channels} input channel(s) but the image has {channels}: "
                             "choose another model or the right channel axis.")
    return PreparedImage(data=data, n_plane_axes=n_plane_axes, spatial_dims=spatial_dims, warnings=warnings)


def _subsample(data, max_samples: int = MAX_STAT_SAMPLES) -> np.ndarray:
    """A strided sample of at most about ``max_samples`` values (computed if lazy)."""
    size = int(np.prod(data.shape, dtype=np.int64))
    step = max(1, int(np.ceil((size / max_samples) ** (1.0 / data.ndim))))
    sample = data[(slice(None, None, step),) * data.ndim]
    if _is_lazy(sample):
        sample = sample.compute()
    return np.asarray(sample)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel affine map ``(x - low) / (high - low)``, with non-finite values clamped."""

    low: np.ndarray  # (C,)
    high: np.ndarray  # (C,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise a ``(C, *spatial)`` block to float32."""
        x = np.asarray(x, dtype=np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        low, high = self.low.reshape(shape), self.high.reshape(shape)
        x = (x - low) / (high - low)
        if not np.isfinite(x).all():
            np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        return x


def fit_normalizer(plane, normalization: dict, warnings: list[str] | None = None) -> Normalizer:
    """Percentile statistics of a ``(C, *spatial)`` plane from a subsample.

    Constant channels and non-finite pixels are reported in ``warnings`` (not raised: the
    network still runs and the user is told why the result may be empty).
    """
    channels = plane.shape[0]
    low, high = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    for c in range(channels):
        sample = _subsample(plane[c]).astype(np.float64, copy=False)
        finite = np.isfinite(sample)
        if not finite.all() and warnings is not None:
            msg = "The image contains NaN or infinite values; they were treated as background."
            if msg not in warnings:
                warnings.append(msg)
        sample = sample[finite]
        if sample.size == 0:
            continue
        if normalization.get("kind") == "none":
            continue
        lo, hi = np.percentile(sample, [normalization["low"], normalization["high"]])
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            lo, hi = float(sample.min()), float(sample.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            if warnings is not None:
                msg = "The image is constant: there is nothing to segment."
                if msg not in warnings:
                    warnings.append(msg)
            lo, hi = lo, lo + 1.0  # maps the constant to 0 (background) without dividing by zero
        low[c], high[c] = lo, hi
    return Normalizer(low, high)
