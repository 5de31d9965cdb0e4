"""The U-Net paper's loss weight map (Ronneberger et al. 2015, eq. 2), 2D and 3D, fast.

::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

* ``w_c`` balances the class frequencies of background (``labels == 0``) and foreground
  (``labels > 0``): ``w_c(k) = N / (2 * n_k)`` for class ``k`` with ``n_k`` pixels among the
  ``N`` counted ones, then divided by the weight of the more frequent class, so that
  **the more frequent class weighs 1** and the rarer one ``n_frequent / n_rare``.
* ``d1`` / ``d2`` are the distances from a pixel to the nearest / second-nearest object
  (instance): the Euclidean distance from the pixel's centre to the nearest pixel centre
  of that object (the convention of ``scipy.ndimage.distance_transform_edt``: a background
  pixel next to an object is at distance 1 pixel, i.e. ``spacing`` along that axis).
* As in the paper, the separation term applies to **background pixels only** (the gaps
  between nearby cells); object pixels get ``w_c`` alone. A pixel with no second object
  (``d2`` infinite) gets no separation term.

Distances, ``sigma`` and ``spacing`` share one unit: pixels by default, or e.g. micrometres
when ``spacing`` is the layer's scale. ``w0`` and the weights are dimensionless.

Speed: no distance transform ever runs on the whole image per object. The separation term is
below ``tolerance`` wherever ``d1 + d2 > R = sigma * sqrt(2 * ln(w0 / tolerance))``, and there
``d2 <= R``, so a pixel that matters lies within ``R`` of both its nearest objects. Each object
therefore gets one exact Euclidean distance transform inside its bounding box grown by ``R``
(all of the object lies in that box, so the distances there are exact), and a running
minimum / second minimum over objects yields exact ``d1`` and ``d2`` wherever ``d2 <= R``.
Pixels further away get no separation term: the absolute error is below ``tolerance``.

This module imports no Qt or napari.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from scipy import ndimage as ndi

from ..inputs import WEIGHT_MAP_LABELS, check_instance_labels

__all__ = ["weight_map", "separation_cutoff"]


def separation_cutoff(w0: float, sigma: float, tolerance: float = 1e-3) -> float:
    """``R`` such that ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2)) < tolerance`` when ``d1 + d2 > R``.

    Same unit as ``sigma`` (pixels or physical). 0 when ``w0 <= tolerance`` (the term never
    reaches the tolerance).
    """
    if w0 <= tolerance:
        return 0.0
    return float(sigma * math.sqrt(2.0 * math.log(w0 / tolerance)))


def _check_number(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def _check_labels(labels) -> np.ndarray:
    """An integer instance mask, 2D or 3D, non-negative (booleans and floats refused)."""
    return check_instance_labels(labels, WEIGHT_MAP_LABELS)


def _check_spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    if isinstance(spacing, Real) and not isinstance(spacing, bool):
        spacing = [spacing] * ndim
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a number or one number per axis, got {spacing!r}.") from None
    if values.shape != (ndim,):
        raise ValueError(f"spacing must have one value per axis of the {ndim}D labels, got {spacing!r}.")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be finite and > 0, got {spacing!r}.")
    return values


def _class_weights(class_weights, labels: np.ndarray, counted: np.ndarray | None) -> tuple[float, float]:
    """(background weight, foreground weight)."""
    if class_weights is None:
        return 1.0, 1.0
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', None or (background, foreground) weights, "
                             f"got {class_weights!r}.")
        foreground = labels > 0
        if counted is None:
            n_fg = int(np.count_nonzero(foreground))
            n_bg = labels.size - n_fg
        else:
            n_fg = int(np.count_nonzero(foreground & counted))
            n_bg = int(np.count_nonzero(counted)) - n_fg
        if n_fg == 0 or n_bg == 0:  # one class only: nothing to balance
            return 1.0, 1.0
        # N / (2 n_k), divided by the weight of the more frequent class: n_max / n_k
        n_max = max(n_bg, n_fg)
        return n_max / n_bg, n_max / n_fg
    try:
        values = [float(v) for v in class_weights]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"class_weights must be 'balanced', None or two non-negative numbers "
                         f"(background, foreground), got {class_weights!r}.")
    return values[0], values[1]


def _objects(labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Labels with small consecutive-ish ids (as a suitable int dtype) and their bounding boxes."""
    top = int(labels.max()) if labels.size else 0
    if top <= max(labels.size, 1) and top < np.iinfo(np.int32).max:
        ids = labels if labels.dtype == np.int32 else labels.astype(np.int32)
    else:  # huge sparse ids: relabel to 1..n so that find_objects stays small
        _, inverse = np.unique(labels, return_inverse=True)
        ids = inverse.reshape(labels.shape).astype(np.int32)
        if labels.min() > 0:  # no background: inverse starts at 0 for the first object
            ids += 1
    return ids, ndi.find_objects(ids)


def _two_nearest(ids: np.ndarray, boxes: list, spacing: np.ndarray, cutoff: float):
    """Smallest and second-smallest object distance per pixel, exact where <= ``cutoff``.

    Returns two float32 arrays of ``ids.shape`` (``inf`` where no object lies within reach).
    """
    best1 = np.full(ids.shape, np.inf, dtype=np.float32)
    best2 = np.full(ids.shape, np.inf, dtype=np.float32)
    # a pixel more than ``margin[k]`` pixels outside the box along axis k is further than cutoff
    margin = [int(math.floor(cutoff / s)) + 1 for s in spacing]
    for index, box in enumerate(boxes):
        if box is None:
            continue
        grown = tuple(slice(max(sl.start - m, 0), min(sl.stop + m, n))
                      for sl, m, n in zip(box, margin, ids.shape))
        outside = ids[grown] != index + 1
        dist = ndi.distance_transform_edt(outside, sampling=spacing).astype(np.float32)
        b1, b2 = best1[grown], best2[grown]  # views: updated in place
        closer = dist < b1
        np.minimum(b2, dist, out=b2)
        b2[closer] = b1[closer]  # the old nearest becomes the second nearest
        b1[closer] = dist[closer]
    return best1, best2


def weight_map(labels, w0: float = 10.0, sigma: float = 5.0, spacing=None, class_weights="balanced",
               ignore_mask=None, *, tolerance: float = 1e-3) -> np.ndarray:
    """Per-pixel loss weights of the U-Net paper, eq. 2, for a 2D or 3D instance mask.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` on background pixels,
    ``w(x) = w_c(x)`` on object pixels (see the module docstring for the exact definitions).

    Args:
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integer instance mask, 0 = background, 1..N
            objects (ids need not be consecutive; an id may cover several pieces).
        w0: amplitude of the separation term (dimensionless, >= 0; 0 = class weights only).
        sigma: width of the separation term, > 0, in the unit of ``spacing`` (pixels when
            ``spacing`` is None).
        spacing: size of a pixel along each axis (e.g. micrometres, napari's layer
            ``scale``), one number per axis or one for all; None = 1 pixel. Distances are
            Euclidean in this unit, so anisotropic volumes are handled exactly.
        class_weights: ``"balanced"`` (default): the more frequent of background /
            foreground weighs 1, the rarer ``n_frequent / n_rare`` (1 for both when a class is
            absent); ``None``: 1 everywhere; or ``(background, foreground)`` weights.
        ignore_mask: optional boolean array of ``labels.shape``; True pixels are left out of
            the class counts and get weight 0. Objects inside it still count as neighbours
            for the distances.
        tolerance: absolute error allowed on the separation term (keyword only). Pixels with
            ``d1 + d2 > sigma * sqrt(2 ln(w0 / tolerance))`` get no separation term; the term
            is exact (float32) everywhere else.

    Returns:
        ``float32`` array of ``labels.shape``.

    Complexity: ``O(N)`` for the image plus one linear-time distance transform per object in
    its bounding box grown by the cutoff ``R`` (about ``4.3 * sigma`` for the defaults), i.e.
    ``O(N + sum over objects of (box extent + 2 R)^d)``; memory two float32 images plus one
    grown box. About 25-30 ms for 1024² with 100 nuclei on 2 CPU cores.

    Raises:
        ValueError: labels not integer, not 2D/3D or negative; bad ``w0``, ``sigma``,
            ``spacing``, ``class_weights``, ``ignore_mask`` or ``tolerance``.
    """
    labels = _check_labels(labels)
    w0 = _check_number("w0", w0, positive=False)
    sigma = _check_number("sigma", sigma, positive=True)
    tolerance = _check_number("tolerance", tolerance, positive=True)
    spacing = _check_spacing(spacing, labels.ndim)
    counted = None
    if ignore_mask is not None:
        ignore_mask = np.asarray(ignore_mask)
        if ignore_mask.shape != labels.shape:
            raise ValueError(f"ignore_mask must have the labels' shape {labels.shape}, got {ignore_mask.shape}.")
        if ignore_mask.dtype != bool and not np.issubdtype(ignore_mask.dtype, np.integer):
            raise ValueError(f"ignore_mask must be boolean (True = ignored), got dtype {ignore_mask.dtype}.")
        ignore_mask = ignore_mask.astype(bool, copy=False)
        counted = ~ignore_mask
    w_bg, w_fg = _class_weights(class_weights, labels, counted)

    background = labels == 0
    out = np.where(background, np.float32(w_bg), np.float32(w_fg))
    cutoff = separation_cutoff(w0, sigma, tolerance)
    if cutoff > 0 and labels.size and not background.all():
        ids, boxes = _objects(labels)
        best1, best2 = _two_nearest(ids, boxes, spacing, cutoff)
        near = background & np.isfinite(best2)
        total = best1[near].astype(np.float64) + best2[near]
        out[near] += (w0 * np.exp(-total * total / (2.0 * sigma * sigma))).astype(np.float32)
    if ignore_mask is not None:
        out[ignore_mask] = 0.0
    return out
