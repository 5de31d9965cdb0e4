"""Where the base model is wrong: the pixels fine-tuning should look at first (no Qt).

A biologist corrects what the model got wrong; most of a corrected image is what the model
already did right. :func:`error_map` marks the objects the base model missed, merged, split or
invented (matched one-to-one at IoU 0.5, as AP@0.5 counts them), so the patch sampler can place
a share of the patches on them (``train_iter(focus_maps=..., focus_bias=...)``).
"""

from __future__ import annotations

import numpy as np

from ..metrics import match_instances


def error_map(truth: np.ndarray, predicted: np.ndarray, reviewed: np.ndarray | None = None,
              iou: float = 0.5) -> np.ndarray:
    """Boolean map of the pixels of every true object with no predicted match at ``iou`` and of
    every predicted object with no true match (only where ``reviewed``, when given)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError(f"The labels {truth.shape} and the prediction {predicted.shape} differ in shape.")
    matching = match_instances(truth, predicted, iou)
    true_ids, pred_ids = np.unique(truth), np.unique(predicted)
    missed = np.setdiff1d(true_ids[true_ids != 0], matching.pairs[:, 0])
    invented = np.setdiff1d(pred_ids[pred_ids != 0], matching.pairs[:, 1])
    wrong = np.isin(truth, missed) | np.isin(predicted, invented)
    if reviewed is not None:
        wrong &= np.asarray(reviewed, bool)
    return wrong
