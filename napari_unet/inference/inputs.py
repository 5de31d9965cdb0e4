"""Normalising user images for a network, without loading lazy (dask) arrays whole.

Normalisation statistics come from a strided subsample, so an 8192² or a dask-backed image is
never copied whole just to compute percentiles. Arranging an image as ``(*planes, C, *spatial)``
(:func:`prepare_image`: data types, channels, colour to grey) is :mod:`napari_unet.inputs`'s,
the one module that reads images and checks labels for everyone; its names stay importable here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inputs import CHANNEL_AXIS_HINT, PreparedImage, check_image_dtype, prepare_image

__all__ = ["CHANNEL_AXIS_HINT", "PreparedImage", "check_image_dtype", "prepare_image", "MAX_STAT_SAMPLES",
           "Normalizer", "fit_normalizer"]

MAX_STAT_SAMPLES = 2_000_000


def _is_lazy(data) -> bool:
    return hasattr(data, "compute") and hasattr(data, "chunks")


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
