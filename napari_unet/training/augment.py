"""Seeded data augmentation for training patches, 2D ``(H, W)`` and 3D ``(D, H, W)``.

Every function takes the ``numpy.random.Generator`` that drives it and nothing else random, so a
fixed seed gives the same samples. Spatial operations take a sequence of arrays that share their
trailing spatial shape (an image ``(C, *spatial)``, a target ``(*spatial)``, weights
``(*spatial)``; ``None`` entries pass through) and move them all the same way. Integer arrays
(labels, targets with -1 = ignore) are always resampled with nearest neighbour (order 0), so
only values that existed before come out. Out-of-image samples reflect (scipy's ``"reflect"``).
Intensity operations expect normalised images (roughly 0..1) ``(C, *spatial)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}.")


def _check_range(name: str, r, low: float = -np.inf) -> tuple[float, float]:
    if len(r) != 2 or not low <= r[0] <= r[1]:
        raise ValueError(f"{name} must be a (low, high) range with {low} <= low <= high, got {r!r}.")
    return float(r[0]), float(r[1])


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _spatial_shape(arrays, spatial_dims: int | None) -> tuple[int, ...]:
    """The spatial shape the non-None ``arrays`` share (their last ``spatial_dims`` axes)."""
    present = [np.asarray(a) for a in arrays if a is not None]
    if not present:
        raise ValueError("Give at least one array to augment.")
    spatial_dims = min(a.ndim for a in present) if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3):
        raise ValueError(f"Arrays must be 2D (H, W) or 3D (D, H, W) spatially, got {spatial_dims} spatial dims.")
    shapes = {a.shape[a.ndim - spatial_dims:] for a in present if a.ndim >= spatial_dims}
    if len(shapes) != 1 or any(a.ndim > spatial_dims + 1 for a in present):
        raise ValueError(f"Arrays must be (*spatial) or (C, *spatial) with one spatial shape, got "
                         f"{[a.shape for a in present]}.")
    return shapes.pop()


def displacement_field(rng: np.random.Generator, shape, grid=3, sigma=10.0) -> np.ndarray:
    """The U-Net paper's smooth random displacements ``(ndim, *shape)`` float32, in pixels.

    Displacement vectors on a coarse ``grid`` (int or one per axis, >= 2; the paper uses 3x3)
    spanning the image corner to corner, drawn from N(0, ``sigma``) pixels (scalar or one per
    axis, e.g. smaller along an anisotropic depth), then upsampled with a cubic spline. The
    spline is a tensor product, so it is applied one axis at a time as a small matrix.
    """
    _check_rng(rng)
    shape = tuple(int(n) for n in shape)
    grid = (grid,) * len(shape) if np.ndim(grid) == 0 else tuple(grid)
    sigma = np.asarray(sigma, np.float64)
    if len(grid) != len(shape) or any(int(g) != g or g < 2 for g in grid):
        raise ValueError(f"grid must be an int >= 2 or one per axis of {shape}, got {grid}.")
    if sigma.size not in (1, len(shape)) or sigma.ndim > 1 or not (sigma >= 0).all() or not np.isfinite(sigma).all():
        raise ValueError(f"sigma must be a non-negative number of pixels (or one per axis), got {sigma}.")
    sigma = np.broadcast_to(sigma, (len(shape),))
    field = rng.normal(size=(len(shape),) + tuple(int(g) for g in grid)) * sigma.reshape((-1,) + (1,) * len(shape))
    for axis, (n, g) in enumerate(zip(shape, grid)):
        x = np.linspace(0, g - 1, n)[None]
        basis = np.stack([ndi.map_coordinates(e, x, order=3, mode="mirror") for e in np.eye(int(g))], axis=1)
        field = np.moveaxis(np.tensordot(basis, field, axes=(1, axis + 1)), 0, axis + 1)
    return field.astype(np.float32)


def warp(arrays, coordinates: np.ndarray, orders=None, mode: str = "reflect") -> tuple:
    """Resample each array at ``coordinates`` ``(ndim, *spatial)`` (output pixel -> input position).

    ``orders``: spline order per array (default 0 for integer / bool arrays, 1 for floats);
    integer arrays must use 0. Channels of ``(C, *spatial)`` arrays are warped one by one.
    Shapes and dtypes are kept.
    """
    coordinates = np.asarray(coordinates, np.float64)  # what map_coordinates uses: convert once, not per array
    spatial = coordinates.shape[1:]
    if orders is None:
        orders = [0 if a is not None and np.asarray(a).dtype.kind in "iub" else 1 for a in arrays]
    if len(orders) != len(arrays):
        raise ValueError(f"Give one interpolation order per array: {len(arrays)} arrays, {len(orders)} orders.")
    out = []
    for a, order in zip(arrays, orders):
        if a is None:
            out.append(None)
            continue
        a = np.asarray(a)
        if order not in range(6) or (a.dtype.kind in "iub" and order != 0):
            raise ValueError(f"Order {order} is invalid for a {a.dtype} array: labels need 0, images 0..5.")
        flat = a.reshape((-1,) + spatial).view(np.uint8) if a.dtype == bool else a.reshape((-1,) + spatial)
        result = np.empty_like(flat)
        for c in range(flat.shape[0]):
            ndi.map_coordinates(flat[c], coordinates, output=result[c], order=order, mode=mode)
        out.append(result.view(a.dtype).reshape(a.shape))
    return tuple(out)


def _identity(shape) -> np.ndarray:
    return np.indices(shape, dtype=np.float32)


def _zoomed(shape, factor: float) -> np.ndarray:
    """Coordinates that magnify by ``factor`` about the centre (> 1 zooms in)."""
    centre = ((np.asarray(shape, np.float32) - 1) / 2).reshape((-1,) + (1,) * len(shape))
    return (_identity(shape) - centre) / np.float32(factor) + centre


def elastic_deform(rng: np.random.Generator, arrays, grid=3, sigma=10.0, orders=None, spatial_dims=None) -> tuple:
    """Warp all ``arrays`` with one :func:`displacement_field` (the U-Net paper's deformation).

    ``orders`` default: 0 for integer arrays (labels), 1 for floats (use 3 for bicubic images).
    """
    shape = _spatial_shape(arrays, spatial_dims)
    return warp(arrays, _identity(shape) + displacement_field(rng, shape, grid, sigma), orders)


def random_scale(rng: np.random.Generator, arrays, scale=(0.8, 1.25), orders=None, spatial_dims=None) -> tuple:
    """Zoom all ``arrays`` about their centre by one factor drawn log-uniformly from ``scale``.

    The output keeps the input shape: zooming in crops, zooming out fills with the reflection.
    """
    low, high = _check_range("scale", scale, low=1e-3)
    _check_rng(rng)
    return warp(arrays, _zoomed(_spatial_shape(arrays, spatial_dims), _log_uniform(rng, low, high)), orders)


def random_flip_rot90(rng: np.random.Generator, arrays, spatial_dims=None) -> tuple:
    """The same random flips of every spatial axis and quarter turns in the (H, W) plane.

    Quarter turns by 90 / 270 degrees only when H == W, so shapes never change.
    """
    _check_rng(rng)
    shape = _spatial_shape(arrays, spatial_dims)
    flips = rng.integers(2, size=len(shape)).astype(bool)
    k = int(rng.integers(4)) if shape[-1] == shape[-2] else 2 * int(rng.integers(2))
    index = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return tuple(None if a is None else np.ascontiguousarray(np.rot90(np.asarray(a)[(...,) + index], k, axes=(-2, -1)))
                 for a in arrays)


def random_intensity(rng: np.random.Generator, image: np.ndarray, scale=(0.75, 1.25), shift=(-0.1, 0.1),
                     gamma=(0.7, 1.5)) -> np.ndarray:
    """Per channel of ``image`` ``(C, *spatial)``: gamma, then ``* scale + shift`` (float32 out).

    Gamma (log-uniform in ``gamma``) is applied to the channel rescaled to 0..1 by its min / max
    (clipped, so the power is defined), then mapped back: contrast changes, range does not.
    """
    _check_rng(rng)
    image = np.asarray(image, np.float32)
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (C, D, H, W), got shape {image.shape}.")
    (s0, s1), (o0, o1) = _check_range("scale", scale), _check_range("shift", shift)
    g0, g1 = _check_range("gamma", gamma, low=1e-3)
    out = np.empty_like(image)
    for c, channel in enumerate(image):
        g = _log_uniform(rng, g0, g1)
        low, high = float(channel.min()), float(channel.max())
        if high > low:
            channel = np.clip((channel - low) / (high - low), 0, 1) ** np.float32(g) * (high - low) + low
        out[c] = channel * np.float32(rng.uniform(s0, s1)) + np.float32(rng.uniform(o0, o1))
    return out


def random_noise(rng: np.random.Generator, image: np.ndarray, std=(0.0, 0.05)) -> np.ndarray:
    """``image`` plus Gaussian noise whose standard deviation is drawn uniformly from ``std``."""
    _check_rng(rng)
    low, high = _check_range("std", std, low=0.0)
    image = np.asarray(image, np.float32)
    return image + rng.normal(0.0, rng.uniform(low, high), size=image.shape).astype(np.float32)


@dataclass
class Augmenter:
    """A seeded augmentation pipeline for one training sample; each step runs with its probability
    (0 turns it off). Order: flips / quarter turns, then scale and elastic deformation in one
    resampling, then intensity, then noise.

    Defaults suit fluorescence / brightfield patches normalised to ~0..1. ``elastic_grid`` and
    ``elastic_sigma`` (pixels) are the paper's 3x3 grid and 10 px, chosen for ~500 px tiles; with
    ``elastic_fold_free`` the sigma along each axis is capped at a tenth of the coarse-grid
    spacing along that axis, so small patches are not folded over: each displacement changes by
    about a tenth of a pixel per pixel along its own axis, and the shears across axes multiply to
    about 1/100, whatever the anisotropy. A short depth axis therefore limits the depth
    displacement only; the in-plane deformation stays as strong as the patch's side allows.
    ``image_order`` 1 is linear (3 is bicubic, sharper and ~2x slower).
    """

    p_flip_rot: float = 1.0
    p_elastic: float = 0.5
    elastic_grid: int | tuple = 3
    elastic_sigma: float | tuple = 10.0
    elastic_fold_free: bool = True
    p_scale: float = 0.3
    scale: tuple = (0.8, 1.25)
    p_intensity: float = 0.8
    intensity_scale: tuple = (0.75, 1.25)
    intensity_shift: tuple = (-0.1, 0.1)
    gamma: tuple = (0.7, 1.5)
    p_noise: float = 0.3
    noise_std: tuple = (0.0, 0.05)
    image_order: int = 1

    def __post_init__(self):
        for name in ("p_flip_rot", "p_elastic", "p_scale", "p_intensity", "p_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}.")
        if self.image_order not in range(6):
            raise ValueError(f"image_order must be a spline order 0..5, got {self.image_order}.")

    def elastic_sigma_for(self, shape) -> np.ndarray:
        """The displacement sigma (pixels, one per axis) used for patches of spatial ``shape``."""
        sigma = np.broadcast_to(np.asarray(self.elastic_sigma, np.float64), (len(shape),))
        if not self.elastic_fold_free:
            return sigma
        grid = np.broadcast_to(np.asarray(self.elastic_grid), (len(shape),))
        spacing = np.array([(n - 1) / max(int(g) - 1, 1) for n, g in zip(shape, grid)])
        return np.minimum(sigma, spacing / 10)

    def __call__(self, rng: np.random.Generator, image: np.ndarray, target: np.ndarray,
                 weights: np.ndarray | None = None) -> tuple:
        """Augment ``image`` ``(C, *spatial)`` float, ``target`` ``(*spatial)`` int (instance or class
        ids, -1 = ignore) and ``weights`` ``(*spatial)`` float or None alike; shapes and dtypes kept.
        """
        _check_rng(rng)
        image, target = np.asarray(image), np.asarray(target)
        dtype = image.dtype
        if image.ndim != target.ndim + 1 or image.shape[1:] != target.shape or target.ndim not in (2, 3):
            raise ValueError(f"Expected image (C, *spatial) and target (*spatial) with spatial 2D or 3D, got "
                             f"{image.shape} and {target.shape}.")
        if image.dtype.kind != "f" or target.dtype.kind not in "iub":
            raise ValueError(f"image must be float and target integer, got {image.dtype} and {target.dtype}.")
        if weights is not None and np.shape(weights) != target.shape:
            raise ValueError(f"weights must have the target's shape {target.shape}, got {np.shape(weights)}.")
        arrays, orders = (image, target, weights), (self.image_order, 0, 1)
        if rng.uniform() < self.p_flip_rot:
            arrays = random_flip_rot90(rng, arrays, spatial_dims=target.ndim)
        coordinates = None
        if rng.uniform() < self.p_scale:
            low, high = _check_range("scale", self.scale, low=1e-3)
            coordinates = _zoomed(target.shape, _log_uniform(rng, low, high))
        if rng.uniform() < self.p_elastic:
            field = displacement_field(rng, target.shape, self.elastic_grid, self.elastic_sigma_for(target.shape))
            coordinates = (_identity(target.shape) if coordinates is None else coordinates) + field
        if coordinates is not None:
            arrays = warp(arrays, coordinates, orders)
        image, target, weights = arrays
        if rng.uniform() < self.p_intensity:
            image = random_intensity(rng, image, self.intensity_scale, self.intensity_shift, self.gamma)
        if rng.uniform() < self.p_noise:
            image = random_noise(rng, image, self.noise_std)
        return image.astype(dtype, copy=False), target, weights
