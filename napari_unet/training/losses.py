"""Losses for dense segmentation: weighted cross-entropy, soft Dice, and their weighted sum.

Shapes: ``logits`` ``(B, K, *spatial)``; ``target`` ``(B, *spatial)`` integer class indices in
``0..K-1``, with :data:`IGNORE` (-1) for pixels that must not count (padding, unreviewed
regions); ``weights`` ``(B, *spatial)`` optional per-pixel weights (e.g. the U-Net paper's
weight map). ``K = 1`` means a single sigmoid foreground channel; ``K >= 2`` softmax classes
where class 0 is the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Target value of pixels that no loss counts.
IGNORE = -1


def _check(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> None:
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target must be (B, *spatial) = {tuple(logits.shape[:1] + logits.shape[2:])} for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}.")
    if weights is not None and weights.shape != target.shape:
        raise ValueError(f"weights must have the target's shape {tuple(target.shape)}, got {tuple(weights.shape)}.")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel cross-entropy, averaged with ``weights`` over the pixels whose target is not -1.

    ``sum(w * ce) / sum(w)`` over counted pixels: the weights shift emphasis between pixels
    without changing the scale of the loss (so the learning rate need not follow them). Returns
    0 (with a gradient) when no pixel counts.
    """
    _check(logits, target, weights)
    valid = target != IGNORE
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], (safe > 0).to(logits.dtype), reduction="none")
    else:
        ce = F.cross_entropy(logits, safe, reduction="none")
    w = valid.to(ce.dtype) if weights is None else weights.to(ce.dtype) * valid
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` probability that a pixel is not background."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` on the foreground (any class but 0).

    Sums run over the whole batch (a "batch Dice"), so patches without objects do not make
    the loss jump; pixels whose target is -1 are left out.
    """
    _check(logits, target, None)
    valid = (target != IGNORE).to(logits.dtype)
    p = foreground_probability(logits) * valid
    t = (target > 0).to(logits.dtype) * valid
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


class SegmentationLoss:
    """A weighted sum of named terms: ``ce_weight * cross_entropy + dice_weight * soft_dice``.

    Calling it returns ``(total, parts)`` where ``parts`` maps each term's name to its
    (detached) value, for logs. More terms (e.g. focal, deep-supervision levels) are added by
    extending :attr:`terms`.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0):
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError("Loss weights must be non-negative and not all zero.")
        self.terms = {"ce": (ce_weight, lambda lo, t, w: cross_entropy(lo, t, w)),
                      "dice": (dice_weight, lambda lo, t, w: soft_dice(lo, t))}

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None):
        total = logits.new_zeros(())
        parts = {}
        for name, (factor, fn) in self.terms.items():
            if factor:
                value = fn(logits, target, weights)
                total = total + factor * value
                parts[name] = float(value.detach())
        return total, parts

    def describe(self) -> str:
        return " + ".join(f"{f:g} x {n}" for n, (f, _) in self.terms.items() if f)
