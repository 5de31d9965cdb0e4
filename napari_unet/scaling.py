"""Object size: images are resized so that objects have the diameter the network works at.

A U-Net sees a fixed window of pixels: cells of 70 px fill its receptive field with one cell's
texture, and nuclei of 10 px leave it mostly background. As Cellpose does with its diameter,
a model file may say at which object diameter its network works (``input.object_diameter``, in
pixels of what the network sees) and which diameter the objects of the images it was made for
have (``input.image_object_diameter``, in image pixels). Prediction resizes each plane by
``network / image diameter``, predicts, and resizes the probabilities back, so labels always have
the image's shape; fine-tuning resizes each corrected image by ``network / its objects' median
diameter`` (measured on the corrections). Phase-contrast cells of 69 px fine-tuned at 0.5x
scored AP@0.5 0.72 against 0.62 at full size, same 5 CPU minutes (benchmarks/README.md).

All sizes here are in pixels along one axis (a diameter), for the in-plane (last two) axes.
"""

from __future__ import annotations

import math

import numpy as np

#: objects smaller than this (pixels) are ignored when measuring a median diameter (stray fragments)
MIN_OBJECT_PIXELS = 16
#: scales this close to 1 are not worth a resampling pass
NO_RESIZE = 0.05
#: the range of scales prediction and fine-tuning accept (a diameter far off is a typo)
MIN_SCALE, MAX_SCALE = 1 / 16, 8.0


def median_diameter(labels, mask=None, whole: bool = False) -> float | None:
    """The diameter (pixels) of a disc with the median object area of ``labels`` (instance ids,
    2D, or a stack of 2D planes: areas are counted per plane); ``mask`` limits the pixels counted
    (the reviewed region). None when there is no object of at least :data:`MIN_OBJECT_PIXELS`.

    ``whole``: leave out the objects cut by the edge of the image or of ``mask`` (their area is a
    part of theirs: a reviewed window of 160 px over discs of 68 px measured 43 px), unless no
    other object is left."""
    labels = np.asarray(labels)
    if mask is not None:
        mask = np.asarray(mask, bool)
        labels = np.where(mask, labels, 0)
    planes = labels.reshape((-1,) + labels.shape[-2:])
    masks = [None] * len(planes) if mask is None else np.broadcast_to(mask, labels.shape).reshape(planes.shape)
    areas, uncut = [], []
    for plane, inside in zip(planes, masks):
        ids, counts = np.unique(plane, return_counts=True)  # the ids present only: ids may be huge
        big = (counts >= MIN_OBJECT_PIXELS) & (ids != 0)
        areas.append(counts[big])
        if whole:
            uncut.append(counts[big & ~np.isin(ids, _cut_ids(plane, inside))])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    if whole and uncut and np.concatenate(uncut).size:
        areas = np.concatenate(uncut)
    if areas.size == 0:
        return None
    return float(2.0 * math.sqrt(float(np.median(areas)) / math.pi))


def _cut_ids(plane: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """The ids on the edge of ``plane`` or of the region ``inside`` (True = counted)."""
    from scipy import ndimage as ndi

    edge = np.zeros(plane.shape, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    if inside is not None:
        edge |= inside & ~ndi.binary_erosion(inside, border_value=1)
    return np.unique(plane[edge])


def check_diameter(value, what: str = "object diameter") -> float | None:
    """``value`` as a positive float, None for None / 0 ("the model's default")."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"The {what} must be a number of pixels, got {value!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"The {what} must be a positive number of pixels (0: the model's default), got {value:g}.")
    return value or None


def scale_for(network: float | None, diameter: float | None) -> float:
    """The factor images are resized by so that objects of ``diameter`` image pixels reach the
    ``network``'s diameter; 1 when either is unknown."""
    if not network or not diameter:
        return 1.0
    scale = network / diameter
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"An object diameter of {diameter:g} px would resize the image {scale:.3g}x for a model that "
                         f"works at {network:g} px (allowed: {MIN_SCALE:g}x to {MAX_SCALE:g}x): check the diameter.")
    return 1.0 if abs(scale - 1.0) < NO_RESIZE else scale


def scaled_shape(shape, scale: float) -> tuple[int, ...]:
    """The in-plane (last two) axes of ``shape`` times ``scale`` (at least 1 pixel)."""
    shape = tuple(int(n) for n in shape)
    return shape[:-2] + tuple(max(1, int(round(n * scale))) for n in shape[-2:])


def resize_image(image: np.ndarray, shape) -> np.ndarray:
    """``image`` ``(..., H, W)`` resized to ``(..., *shape)`` (float32, linear; anti-aliased when
    shrinking, so texture finer than the new pixels does not alias)."""
    from skimage.transform import resize

    image = np.asarray(image)
    target = tuple(image.shape[:-2]) + tuple(int(n) for n in shape[-2:])
    if target == image.shape:
        return image.astype(np.float32, copy=False)
    shrinking = any(t < s for t, s in zip(target[-2:], image.shape[-2:]))
    # leading axes (channels, planes) keep their size: resize them as the identity
    return resize(image.astype(np.float32, copy=False), target, order=1, mode="reflect",
                  anti_aliasing=shrinking, preserve_range=True).astype(np.float32, copy=False)


def resize_labels(labels: np.ndarray, shape) -> np.ndarray:
    """Instance labels ``(..., H, W)`` resized to ``(..., *shape)`` by nearest neighbour (ids kept)."""
    labels = np.asarray(labels)
    shape = tuple(int(n) for n in shape[-2:])
    if labels.shape[-2:] == shape:
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[-2] / shape[0]).astype(np.int64),
                      labels.shape[-2] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[-1] / shape[1]).astype(np.int64),
                      labels.shape[-1] - 1)
    return labels[..., rows[:, None], cols[None, :]]


# -- a window of a plane, resized on the plane's own grid -----------------------------------------
def _grid_samples(n_from: int, n_to: int, start: int, size: int) -> tuple[int, np.ndarray]:
    """Along one axis of a resize from ``n_from`` to ``n_to`` pixels (:func:`resize_image`'s: pixel
    centres at ``(j + 0.5) * n_from / n_to - 0.5``): the first index ``j0`` of the resized samples
    that fall inside the window ``[start, start + size)`` of the source, and their coordinates in
    the window."""
    ratio = n_from / n_to
    first = math.ceil((start + 0.5) / ratio - 0.5 - 1e-9)
    last = math.floor((start + size - 1 + 0.5) / ratio - 0.5 + 1e-9)
    j = np.arange(first, max(first, last + 1))
    return first, (j + 0.5) * ratio - 0.5 - start


def _linear(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """``a`` sampled at fractional ``coords`` along ``axis`` by linear interpolation (clamped at its ends)."""
    n = a.shape[axis]
    c = np.clip(coords, 0, n - 1)
    lo = np.minimum(np.floor(c).astype(np.int64), max(0, n - 2))
    w = (c - lo).astype(np.float32)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def _anti_alias(a: np.ndarray, factors) -> np.ndarray:
    """The Gaussian blur :func:`resize_image` applies before shrinking (sigma ``(factor - 1) / 2``
    along the last two axes, ``factor`` = source / resized pixels), or ``a`` when nothing shrinks."""
    if not any(f > 1 for f in factors):
        return a
    from scipy import ndimage as ndi

    sigma = [0.0] * (a.ndim - 2) + [max(0.0, (f - 1) / 2) for f in factors]
    return ndi.gaussian_filter(a, sigma, mode="mirror")


def resize_window(window: np.ndarray, origin, plane_shape, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The window ``(..., H, W)`` of a plane of in-plane shape ``plane_shape``, whose first pixel
    is at ``origin`` (row, column; may be negative for a mirrored margin), resized as
    :func:`resize_image` resizes the whole plane to :func:`scaled_shape`: the samples of the
    plane's resized grid that fall inside the window, as ``(resized window, its origin on that
    grid)``. Windows that overlap give the same values where they overlap (away from their edges,
    where the anti-aliasing blur sees less), so blocks of a large image have no resampling seams."""
    window = np.asarray(window, np.float32)
    full = scaled_shape(plane_shape, scale)[-2:]
    plane_shape = tuple(int(n) for n in plane_shape[-2:])
    out = _anti_alias(window, [n / m for n, m in zip(plane_shape, full)])
    starts = []
    for k, (n, m, o) in enumerate(zip(plane_shape, full, origin)):
        axis = window.ndim - 2 + k
        first, coords = _grid_samples(n, m, int(o), window.shape[axis])
        out = _linear(out, coords, axis)
        starts.append(first)
    return out.astype(np.float32, copy=False), tuple(starts)


def unresize_window(resized: np.ndarray, resized_origin, plane_shape, scale: float, origin, shape) -> np.ndarray:
    """The inverse of :func:`resize_window`: ``resized`` (a window of the plane's resized grid at
    ``resized_origin``) brought back to the plane's pixels of the window at ``origin`` with in-plane
    ``shape``, as :func:`resize_image` brings a whole resized plane back."""
    resized = np.asarray(resized, np.float32)
    full = scaled_shape(plane_shape, scale)[-2:]
    plane_shape = tuple(int(n) for n in plane_shape[-2:])
    out = _anti_alias(resized, [m / n for n, m in zip(plane_shape, full)])
    for k, (n, m, o, r, size) in enumerate(zip(plane_shape, full, origin, resized_origin, shape)):
        axis = resized.ndim - 2 + k
        i = np.arange(int(o), int(o) + int(size))
        out = _linear(out, (i + 0.5) * (m / n) - 0.5 - r, axis)
    return out.astype(np.float32, copy=False)
