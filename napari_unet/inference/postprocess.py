"""Probabilities -> instance labels: threshold, connected components, optional seeded watershed.

Splitting touching objects works object by object on small crops (distance transform, h-maxima
seeds, watershed), so memory stays proportional to the largest object, not to the image.
Works for 2D and 3D arrays alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return labels


def _split_component(mask: np.ndarray, split_depth: float, smooth: float = 1.0) -> tuple[np.ndarray, int]:
    """Watershed of one object's distance transform from its h-maxima; returns (labels, count).

    The distance transform is smoothed (Gaussian, 1 px) first: ragged outlines then no longer
    make spurious maxima. On the bundled U-Net this took held-out DSB2018 AP@0.5 from 0.69 to
    0.82 and synthetic touching nuclei from 0.72 to 0.82 (no splitting: 0.76 and 0.48).
    """
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    dist = ndi.gaussian_filter(dist, smooth)
    seeds, n = ndi.label(h_maxima(dist, split_depth))
    if n < 2:
        return mask.astype(np.int32), 1
    return watershed(-dist, seeds, mask=mask).astype(np.int32), n


def probabilities_to_labels(probabilities: np.ndarray, target: str = "binary", threshold: float = 0.5,
                            min_size: int = 16, split_touching: bool = True, split_depth: float = 1.0,
                            scale: float = 1.0) -> np.ndarray:
    """Instance labels (int32, 0 = background, 1..N) from class probabilities.

    Args:
        probabilities: ``(K, *spatial)`` as returned by the predictor for one plane/volume:
            K = 1 (foreground) for binary targets, K = 2 (interior, boundary) for boundary targets.
        threshold: probability above which a pixel is foreground (interior for boundary targets).
        min_size: objects with fewer pixels are removed.
        split_touching: binary targets only: split objects whose distance transform has several
            maxima deeper than ``split_depth`` pixels (a seeded watershed).
        scale: the factor the image was resized by for the network (:attr:`Prediction.scale`):
            sizes are in the network's pixels (as the model file's tuned ``min_size``), and one pixel
            of ``probabilities`` is ``scale`` of them, so objects under ``min_size / scale**2``
            pixels go and the split depth and smoothing grow by ``1 / scale``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    if min_size < 0:
        raise ValueError("min_size cannot be negative.")
    probabilities = np.asarray(probabilities)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    if scale != 1:
        min_size = int(round(min_size / scale ** 2))
        split_depth = split_depth / scale
    smooth = 1.0 / scale
    if target == "boundary":
        interior, boundary = probabilities[0], probabilities[1]
        seeds, _ = ndi.label(interior > threshold)
        seeds = _remove_small(seeds, max(1, min_size // 4))
        mask = (interior + boundary) > threshold
        labels = watershed(-interior, seeds, mask=mask).astype(np.int32)
    elif target == "binary":
        labels, n = ndi.label(probabilities[0] > threshold)
        labels = _remove_small(labels.astype(np.int32), min_size)
        if split_touching and n:
            next_id = int(labels.max()) + 1
            for index, box in enumerate(ndi.find_objects(labels), start=1):
                if box is None:
                    continue
                crop = labels[box]
                mask = crop == index
                if mask.sum() < 2 * max(min_size, 8):
                    continue
                parts, count = _split_component(mask, split_depth, smooth)
                if count > 1:
                    crop[mask] = np.where(parts[mask] == 1, index, parts[mask] - 2 + next_id)
                    next_id += count - 1
    else:
        raise ValueError(f"Unknown target {target!r}: choose 'binary' or 'boundary'.")
    labels = _remove_small(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.int32)


#: what :func:`choose_postprocess` tries: thresholds, minimum sizes as a fraction of the median
#: object's area (at least 4 px), and splitting on / off (binary targets)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_SIZE_FRACTIONS = (0.05, 0.15, 0.3)


def choose_postprocess(items, target: str = "binary", metric=None) -> tuple[dict, list]:
    """The post-processing that scores best on held-out data, and the table of every choice.

    ``items``: ``(probabilities (K, *spatial), labels (*spatial))`` pairs (probabilities
    predicted once; only the post-processing varies), or ``(probabilities, labels, group)``
    triples: the score is then the mean of the groups' mean AP@0.5 (so a source with many
    images does not outvote one with few). ``metric(labels, prediction) -> dict`` with ``ap50``
    defaults to :func:`napari_unet.metrics.evaluate`. A few seconds on a few megapixels.
    Returns ``(best settings for probabilities_to_labels, [(settings, score), ...])``; ties go to
    the first choice in the grid order nearest the defaults (threshold 0.5).
    """
    from ..metrics import evaluate

    metric = metric or evaluate
    items = [tuple(item) + (0,) if len(item) == 2 else tuple(item) for item in items]
    if not items:
        raise ValueError("choose_postprocess needs at least one (probabilities, labels) pair.")
    areas = np.concatenate([np.bincount(np.asarray(lab).ravel())[1:] for _, lab, _ in items])
    areas = areas[areas > 0]
    median = float(np.median(areas)) if areas.size else 64.0
    min_sizes = sorted({max(4, int(round(f * median))) for f in MIN_SIZE_FRACTIONS})
    splits = (True, False) if target == "binary" else (True,)
    thresholds = sorted(THRESHOLDS, key=lambda t: abs(t - 0.5))  # the default first: it wins ties
    table = []
    for threshold in thresholds:
        for min_size in min_sizes:
            for split in splits:
                pp = {"threshold": threshold, "min_size": min_size, "split_touching": split}
                groups: dict = {}
                for probs, labels, group in items:
                    predicted = probabilities_to_labels(probs, target=target, **pp)
                    groups.setdefault(group, []).append(metric(np.asarray(labels), predicted)["ap50"])
                table.append((pp, float(np.mean([np.mean(v) for v in groups.values()]))))
    best = max(table, key=lambda row: row[1])  # max keeps the first of equal scores
    return best[0], table


def preload() -> None:
    """Load scikit-image's lazily imported modules that post-processing uses (imports hold Python's
    GIL: a widget calls this in its warm-up worker, so a first run does not stall the viewer)."""
    blobs = np.zeros((1, 24, 24), np.float32)
    blobs[0, 4:20, 4:11] = blobs[0, 4:20, 12:20] = blobs[0, 11:13, 4:20] = 1.0  # two touching objects
    probabilities_to_labels(blobs, min_size=1)
