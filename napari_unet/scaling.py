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
