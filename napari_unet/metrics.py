"""Segmentation metrics: instance matching by IoU, AP, F1, Dice and IoU of the masks.

Definitions (``gt`` and ``pred`` are instance label images of one shape, 0 = background,
every other value one object; 2D or 3D):

- **IoU** of two objects: ``|A ∩ B| / |A ∪ B|``, in pixels (voxels).
- **Matching** at threshold ``t``: a one-to-one assignment of predicted to true objects
  among the pairs with ``IoU >= t``, that first maximises the number of pairs and then their
  total IoU (Hungarian algorithm). Matched pairs are true positives (TP), unmatched predictions
  false positives (FP), unmatched true objects false negatives (FN).
- **Average precision** ``AP@t = TP / (TP + FP + FN)``, as in the 2018 Data Science Bowl and
  StarDist (not the area under a precision-recall curve).
- **F1** ``= 2 TP / (2 TP + FP + FN)``; precision ``TP / (TP + FP)``; recall ``TP / (TP + FN)``.
- **Mean matched IoU**: mean IoU of the matched pairs at ``t``.
- **Dice** of the binary masks ``2 |A ∩ B| / (|A| + |B|)`` and **foreground IoU**
  ``|A ∩ B| / |A ∪ B|`` where ``A = gt > 0``, ``B = pred > 0``.

Edge cases: when both images are empty every score is 1.0 (nothing to find, nothing
invented); when exactly one is empty AP, F1, mean matched IoU, Dice and IoU are 0.0.

Overlaps come from one contingency table built with ``np.bincount`` over the pixels where
both images have an object; the assignment is solved per connected group of overlapping
objects, so a 4096² image with thousands of nuclei is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .inputs import SCORED_LABELS, check_instance_labels

#: IoU thresholds of ``ap50_95`` (COCO-style mean over 0.50, 0.55, ..., 0.95).
AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
#: Keys of :func:`evaluate` that are counts (summed, not averaged, by :func:`mean_metrics`).
COUNT_KEYS = ("tp", "fp", "fn", "n_true", "n_pred")


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to ``0..N`` (flat int64) and return it with the original ids of ``1..N``."""
    flat = check_instance_labels(np.asarray(labels).ravel(), SCORED_LABELS)  # integers >= 0, booleans as 0/1
    if flat.size == 0:
        return flat.astype(np.int64), np.zeros(0, np.int64)
    hi = int(flat.max())
    if hi <= 4 * flat.size + 1024:  # a lookup table is faster than sorting
        present = np.bincount(flat, minlength=1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        ids = np.flatnonzero(present)[1:]
        return lut[flat].astype(np.int64, copy=False), ids.astype(np.int64)
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([np.zeros(1, ids.dtype), ids])  # [0] would turn uint64 ids into float64
        inverse = inverse + 1
    # ids are never negative: uint64 ids above 2**63 stay uint64 rather than wrap around in int64
    id_type = np.uint64 if ids.dtype == np.uint64 and ids[-1] > np.iinfo(np.int64).max else np.int64
    return inverse.astype(np.int64).ravel(), ids[1:].astype(id_type)


@dataclass
class Overlaps:
    """Sizes and pairwise overlaps of the objects of two label images.

    ``pairs``: ``(M, 2)`` indices (0-based, into ``true_ids`` / ``pred_ids``) of every pair that
    shares at least one pixel, with its ``iou`` ``(M,)``.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pairs: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.true_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The :class:`Overlaps` of two instance label images of the same shape."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"The label images differ in shape: {gt.shape} (truth) vs {pred.shape} (prediction): "
                         "compare the prediction with the ground truth of the same image (same height and width).")
    g, true_ids = _compact(gt)
    p, pred_ids = _compact(pred)
    n_g, n_p = len(true_ids), len(pred_ids)
    true_area = np.bincount(g, minlength=n_g + 1)[1:]
    pred_area = np.bincount(p, minlength=n_p + 1)[1:]
    both = (g > 0) & (p > 0)
    # Contingency table of overlapping pixels only, kept sparse: (n_g x n_p) can be huge.
    keys, inter = np.unique((g[both] - 1) * n_p + (p[both] - 1), return_counts=True) if both.any() else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pairs = np.stack([keys // max(n_p, 1), keys % max(n_p, 1)], axis=1) if keys.size else np.zeros((0, 2), np.int64)
    union = true_area[pairs[:, 0]] + pred_area[pairs[:, 1]] - inter
    iou = inter / np.maximum(union, 1)
    return Overlaps(true_ids, pred_ids, true_area, pred_area, pairs, iou.astype(np.float64))


@dataclass
class Matching:
    """Result of :func:`match_instances` at one IoU threshold."""

    threshold: float
    n_true: int
    n_pred: int
    #: matched ``(true_id, pred_id)`` pairs, original label values, ``(TP, 2)``
    pairs: np.ndarray = field(repr=False)
    #: IoU of each matched pair ``(TP,)``
    ious: np.ndarray = field(repr=False)

    @property
    def tp(self) -> int:
        return len(self.ious)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def average_precision(self) -> float:
        """``TP / (TP + FP + FN)``; 1.0 when both images are empty."""
        denom = self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else self.tp / denom

    @property
    def f1(self) -> float:
        """``2 TP / (2 TP + FP + FN)``; 1.0 when both images are empty."""
        denom = 2 * self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else 2 * self.tp / denom

    @property
    def precision(self) -> float:
        return 1.0 if self.n_pred == 0 and self.n_true == 0 else (self.tp / self.n_pred if self.n_pred else 0.0)

    @property
    def recall(self) -> float:
        return 1.0 if self.n_pred == 0 and self.n_true == 0 else (self.tp / self.n_true if self.n_true else 0.0)

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs; 1.0 when both images are empty, 0.0 when nothing matched."""
        if self.tp:
            return float(self.ious.mean())
        return 1.0 if self.n_true == 0 and self.n_pred == 0 else 0.0


def _assign(ov: Overlaps, threshold: float) -> np.ndarray:
    """Indices into ``ov.pairs`` of the matched pairs at ``threshold``."""
    cand = np.flatnonzero(ov.iou >= threshold)
    if cand.size == 0:
        return cand
    rows, cols = ov.pairs[cand, 0], ov.pairs[cand, 1]
    if np.unique(rows).size == rows.size and np.unique(cols).size == cols.size:
        return cand  # already one-to-one (always so for threshold > 0.5)
    # Solve each connected group of candidate pairs on its own small matrix.
    n_g = ov.n_true
    graph = sparse.coo_matrix((np.ones(cand.size), (rows, n_g + cols)), shape=(n_g + ov.n_pred,) * 2)
    _, component = connected_components(graph, directed=False)
    edge_comp = component[rows]
    keep = []
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for group in np.split(order, bounds):
        if group.size == 1:
            keep.append(cand[group])
            continue
        r_ids, r = np.unique(rows[group], return_inverse=True)
        c_ids, c = np.unique(cols[group], return_inverse=True)
        # Score: one point per match plus its IoU / (n + 1), n the most matches the group can have, so
        # all the IoU bonuses together stay under one point and more matches always win
        n = min(len(r_ids), len(c_ids))
        score = np.zeros((len(r_ids), len(c_ids)))
        score[r, c] = 1.0 + ov.iou[cand[group]] / (n + 1)
        lookup = -np.ones((len(r_ids), len(c_ids)), np.int64)
        lookup[r, c] = cand[group]
        ri, ci = linear_sum_assignment(score, maximize=True)
        chosen = lookup[ri, ci]
        keep.append(chosen[chosen >= 0])
    return np.sort(np.concatenate(keep))


def match_instances(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5,
                    _overlaps: Overlaps | None = None) -> Matching:
    """One-to-one matching of ``pred`` to ``gt`` objects at ``IoU >= iou_threshold`` (see module doc)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}: 0.5 is the usual choice.")
    ov = _overlaps if _overlaps is not None else overlaps(gt, pred)
    chosen = _assign(ov, iou_threshold)
    id_type = np.uint64 if np.uint64 in (ov.true_ids.dtype, ov.pred_ids.dtype) else np.int64  # never float64
    pairs = np.stack([ov.true_ids[ov.pairs[chosen, 0]].astype(id_type),
                      ov.pred_ids[ov.pairs[chosen, 1]].astype(id_type)], axis=1) \
        if chosen.size else np.zeros((0, 2), np.int64)
    return Matching(float(iou_threshold), ov.n_true, ov.n_pred, pairs, ov.iou[chosen])


def average_precision(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> float:
    """``TP / (TP + FP + FN)`` at IoU threshold ``iou`` (DSB2018 / StarDist "AP")."""
    return match_instances(gt, pred, iou).average_precision


def f1(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> float:
    """``2 TP / (2 TP + FP + FN)`` at IoU threshold ``iou``."""
    return match_instances(gt, pred, iou).f1


def mean_matched_iou(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> float:
    """Mean IoU of the pairs matched at threshold ``iou``."""
    return match_instances(gt, pred, iou).mean_iou


def _binary_counts(gt, pred) -> tuple[int, int, int]:
    a, b = np.asarray(gt) > 0, np.asarray(pred) > 0
    if a.shape != b.shape:
        raise ValueError(f"The masks differ in shape: {a.shape} vs {b.shape}: compare masks of the same image.")
    inter = int(np.count_nonzero(a & b))
    return inter, int(np.count_nonzero(a)), int(np.count_nonzero(b))


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice ``2 |A ∩ B| / (|A| + |B|)`` of the masks ``gt > 0`` and ``pred > 0``; 1.0 if both are empty."""
    inter, a, b = _binary_counts(gt, pred)
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def foreground_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU ``|A ∩ B| / |A ∪ B|`` of the masks ``gt > 0`` and ``pred > 0``; 1.0 if both are empty."""
    inter, a, b = _binary_counts(gt, pred)
    return 1.0 if a + b == 0 else inter / (a + b - inter)


def evaluate(gt: np.ndarray, pred: np.ndarray, thresholds=AP_THRESHOLDS) -> dict:
    """All metrics of one image as a flat dict of floats (counts as ints).

    Keys: ``ap50``, ``ap75``, ``ap50_95`` (mean AP over ``thresholds``), ``f1``, ``precision``,
    ``recall``, ``mean_iou`` (of the pairs matched at 0.5), ``tp``, ``fp``, ``fn`` (at 0.5),
    ``n_true``, ``n_pred``, ``dice``, ``foreground_iou``.
    """
    ov = overlaps(gt, pred)
    m50 = match_instances(gt, pred, 0.5, _overlaps=ov)
    aps = {t: match_instances(gt, pred, t, _overlaps=ov).average_precision for t in thresholds}
    ap75 = aps[0.75] if 0.75 in aps else match_instances(gt, pred, 0.75, _overlaps=ov).average_precision
    return {
        "ap50": m50.average_precision, "ap75": ap75, "ap50_95": float(np.mean(list(aps.values()))),
        "f1": m50.f1, "precision": m50.precision, "recall": m50.recall, "mean_iou": m50.mean_iou,
        "tp": m50.tp, "fp": m50.fp, "fn": m50.fn, "n_true": m50.n_true, "n_pred": m50.n_pred,
        "dice": dice(gt, pred), "foreground_iou": foreground_iou(gt, pred),
    }


def mean_metrics(per_image: list[dict]) -> dict:
    """Average :func:`evaluate` dicts over images: scores are means of the per-image values
    (each image counts once, as in DSB2018); counts (``tp``, ``fp``, ...) are summed; ``n_images``
    is added. An empty list gives ``{"n_images": 0}``."""
    if not per_image:
        return {"n_images": 0}
    out: dict = {"n_images": len(per_image)}
    for key in per_image[0]:
        values = [d[key] for d in per_image]
        out[key] = int(np.sum(values)) if key in COUNT_KEYS else float(np.mean(values))
    return out
