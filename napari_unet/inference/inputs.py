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


def _looks_rgb(shape: tuple[int, ...]) -> bool:
    """A last axis of 3 or 4 values behind two image-sized axes: colour, not a 3-pixel-wide stack."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) >= 16


def prepare_image(data, spatial_dims: int = 2, in_channels: int = 1, channel_axis: int | None = None,
                  rgb: bool = False) -> PreparedImage:
    """Arrange ``data`` as ``(*planes, C, *spatial)`` for a network with ``in_channels`` inputs.

    ``rgb=True`` (napari's RGB layers) means the last axis holds 3 or 4 colour channels;
    ``channel_axis`` names any other channel axis. A colour image given to a one-channel network
    is converted to grey (mean of R, G, B). Raises ``ValueError`` with what to do on bad input:
    unreadable data types, too few or too many axes, an RGB-looking image with no channel axis,
    empty images and channel counts the model cannot take. Nothing is copied or computed here
    (views only, dask stays lazy) except the grey conversion of colour images.
    """
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        try:
            data = np.asarray(data)
        except ValueError:  # ragged nested lists
            raise ValueError("The image is not a regular array (its rows differ in length): give a numpy or dask "
                             "array with one value per pixel.") from None
    check_image_dtype(data.dtype)
    warnings: list[str] = []
    original_shape = tuple(int(n) for n in data.shape)
    ndim = len(original_shape)
    kind = "2D images (Y, X) or stacks of them (Z or T, Y, X)" if spatial_dims == 2 else "3D volumes (Z, Y, X)"
    if rgb:
        if ndim < 3 or data.shape[-1] not in (3, 4):
            found = f"has {data.shape[-1]}" if ndim >= 3 else "has no colour axis"
            raise ValueError(f"An RGB image needs 3 (RGB) or 4 (RGBA) values on its last axis; this one (shape "
                             f"{original_shape}) {found}: untick 'rgb' for the layer (rgb=False) and choose "
                             f"{CHANNEL_AXIS_HINT} instead.")
        channel_axis = ndim - 1
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise ValueError(f"The channel axis must be an axis number, got {channel_axis!r}: give an integer such "
                             "as 0 or -1, or None for an image without channels.")
        if not -ndim <= channel_axis < ndim:
            raise ValueError(f"Channel axis {channel_axis} does not exist in an image with {ndim} axes (shape "
                             f"{original_shape}): choose an axis from {-ndim} to {ndim - 1}, or none.")
        channel_axis = int(channel_axis) % ndim
        if ndim - 1 < spatial_dims:
            raise ValueError(f"This {spatial_dims}D model needs {spatial_dims} image axes besides the channel axis; "
                             f"the image has shape {original_shape} with channels on axis {channel_axis}: "
                             f"choose no channel axis{' or a 2D model' if spatial_dims == 3 else ''}.")
        order = [a for a in range(ndim) if a != channel_axis]
        order.insert(ndim - 1 - spatial_dims, channel_axis)
        data = data.transpose(order)
        if data.shape[-spatial_dims - 1] == 4 and rgb:
            data = data[(slice(None),) * (data.ndim - spatial_dims - 1) + (slice(0, 3),)]
            warnings.append("The alpha channel of the RGBA image was ignored.")
    else:
        if ndim < spatial_dims:
            if spatial_dims == 3:
                fix = "choose a 2D model (e.g. 'unet'), or give a stack of planes (Z, Y, X)"
            else:
                fix = "give a 2D array (reshape it into rows and columns)"
            raise ValueError(f"The image has {ndim} dimension{'s' if ndim != 1 else ''} (shape {original_shape}) but "
                             f"this {spatial_dims}D model needs at least {spatial_dims} axes: it segments {kind}; "
                             f"{fix}.")
        if _looks_rgb(original_shape):
            raise ValueError(f"The image (shape {original_shape}) looks like a colour image: its last axis holds "
                             f"{original_shape[-1]} values. Mark it as {CHANNEL_AXIS_HINT}, e.g. -1, or pass "
                             "rgb=True (napari: an RGB layer).")
        data = data[(slice(None),) * (data.ndim - spatial_dims) + (None,)]
    n_plane_axes = data.ndim - spatial_dims - 1
    max_planes = 1 if spatial_dims == 2 else 0
    if n_plane_axes > max_planes:
        raise ValueError(
            f"The image has {data.ndim - 1} axes besides channels (shape {original_shape}); this {spatial_dims}D model "
            f"segments {kind}. Slice the data to fewer axes first (one time point or channel, e.g. image[0]), "
            f"or mark {CHANNEL_AXIS_HINT} if one axis holds colours.")
    if any(s == 0 for s in data.shape):
        raise ValueError(f"The image is empty (shape {original_shape}): it has no pixels to segment; "
                         "choose an image with data.")
    channels = data.shape[n_plane_axes]
    if channels != in_channels:
        if in_channels == 1 and channels in (3, 4) and (rgb or channel_axis is not None):
            data = data[(slice(None),) * n_plane_axes + (slice(0, 3),)].mean(axis=n_plane_axes, keepdims=True,
                                                                               dtype=np.float32)
            warnings.append("The colour image was converted to grey for this one-channel model.")
        elif channels == 1:
            raise ValueError(f"This model needs {in_channels} channels but the image has none marked: mark an axis "
                             f"with {in_channels} values as {CHANNEL_AXIS_HINT}, or choose a one-channel model.")
        else:
            raise ValueError(f"This model needs {in_channels} input channel(s) but the image has {channels} on axis "
                             f"{channel_axis}: choose a model trained on {channels}-channel images, or the right "
                             "channel axis.")
    return PreparedImage(data=data, n_plane_axes=n_plane_axes, spatial_dims=spatial_dims, warnings=warnings)


def _subsample(data, max_samples: int = MAX_STAT_SAMPLES) -> np.ndarray:
    """A strided sample of at most about ``max_samples`` values (computed if lazy)."""
    size = int(np.prod(data.shape, dtype=np.int64))
    step = max(1, int(np.ceil((size / max_samples) ** (1.0 / data.ndim))))
    sample = data[(slice(None, None, step),) * data.ndim]
    if _is_lazy(sample):
        sample = sample.compute()
    return np.asarray(sample)


#: Data types whose values float32 holds exactly enough for ``x - low``; wider ones are
#: normalised in float64 (uint64 near 2**63 or float64 near 1e308 would otherwise collapse).
_FLOAT32_SAFE = {np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32)}


@dataclass(frozen=True)
class Normalizer:
    """Per-channel affine map ``(x - low) / (high - low)`` to float32, non-finite values clamped
    (NaN and -inf to 0, +inf to 1). ``low``, ``high``: ``(C,)`` float64 (longdouble for longdouble data)."""

    low: np.ndarray  # (C,)
    high: np.ndarray  # (C,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise a ``(C, *spatial)`` block to float32 (never modifies ``x``)."""
        x = np.asarray(x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        # halves: neither x - low nor high - low can overflow, even for +-1.7e308
        low = (np.asarray(self.low) * 0.5).reshape(shape)
        span = (np.asarray(self.high) * 0.5).reshape(shape) - low
        # float64 (longdouble for longdouble data) where float32 would round x - low away
        work = np.dtype(np.float32) if x.dtype in _FLOAT32_SAFE else np.result_type(x.dtype, np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            x = (x.astype(work, copy=False) * work.type(0.5) - low.astype(work)) / span.astype(work)
            x = x.astype(np.float32, copy=False)  # far outliers may overflow to inf: clamped below
        if not np.isfinite(x).all():
            np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        return x


def fit_normalizer(plane, normalization: dict, warnings: list[str] | None = None) -> Normalizer:
    """Normalisation statistics of a ``(C, *spatial)`` plane from a subsample, per channel:
    ``{"kind": "percentile", "low": 1, "high": 99.8}`` maps those percentiles to 0 and 1 (an
    optional ``"eps"`` is added to the range, as BioImage.IO's ``scale_range`` does),
    ``{"kind": "mean_std", "eps": 1e-6}`` subtracts the mean and divides by ``std + eps``, and
    ``{"kind": "none"}`` keeps the values.

    Constant channels and non-finite pixels are reported in ``warnings`` (not raised: the
    network still runs and the user is told why the result may be empty).
    """
    wide = np.result_type(check_image_dtype(plane.dtype), np.float64)  # float64, or longdouble
    channels = plane.shape[0]
    low, high = np.zeros(channels, wide), np.ones(channels, wide)

    def warn(msg):
        if warnings is not None and msg not in warnings:
            warnings.append(msg)

    for c in range(channels):
        sample = _subsample(plane[c]).astype(wide, copy=False)
        finite = np.isfinite(sample)
        if not finite.all():
            warn("The image contains NaN or infinite values; they were treated as background.")
        sample = sample[finite]
        if sample.size == 0:
            warn("The image has no finite values (all NaN or infinite): there is nothing to segment.")
            continue
        kind = normalization.get("kind")
        if kind == "none":
            continue
        if kind == "mean_std":  # (x - mean) / (std + eps), BioImage.IO's zero_mean_unit_variance
            mean, std = sample.mean(), sample.std()
            low[c], high[c] = mean, mean + std + normalization.get("eps", 1e-6)
            if not std > 0:
                warn("The image is constant: there is nothing to segment.")
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # hi - lo is inf for +-1e308: still a range
            lo, hi = np.percentile(sample, [normalization["low"], normalization["high"]])
            if not (hi - lo > 1e-12 * max(1.0, abs(hi))):
                lo, hi = sample.min(), sample.max()
            if not (hi - lo > 1e-12 * max(1.0, abs(hi))):
                warn("The image is constant: there is nothing to segment.")
                # maps the constant to 0 (background) without dividing by zero, also where lo + 1 == lo
                hi = lo + max(1.0, abs(lo) * 1e-6)
        low[c], high[c] = lo, hi + normalization.get("eps", 0.0)  # BioImage.IO's scale_range: / (hi - lo + eps)
    return Normalizer(low, high)
