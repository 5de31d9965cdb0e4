"""Losses for dense segmentation: weighted cross-entropy, soft Dice, focal, soft IoU, MS-SSIM,
U-Net 3+'s hybrid loss, their weighted sum, and deep supervision over side outputs.

Shapes: ``logits`` ``(B, K, *spatial)``; ``target`` ``(B, *spatial)`` integer class indices in
``0..K-1``, with :data:`IGNORE` (-1) for pixels that must not count (padding, unreviewed
regions); ``weights`` ``(B, *spatial)`` optional per-pixel weights (e.g. the U-Net paper's
weight map). ``K = 1`` means a single sigmoid foreground channel; ``K >= 2`` softmax classes
where class 0 is the background. Every loss leaves out the pixels whose target is -1.
"""

from __future__ import annotations

import math
from typing import Sequence

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


def _binary(logits: torch.Tensor, target: torch.Tensor):
    """``(valid, p, t)``: counted pixels, foreground probability and binary foreground target."""
    valid = (target != IGNORE).to(logits.dtype)
    return valid, foreground_probability(logits), (target > 0).to(logits.dtype)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          alpha: float | Sequence[float] | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), averaged like :func:`cross_entropy`.

    ``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the probability of the pixel's true
    class (softmax over ``K >= 2`` classes, or ``sigmoid`` / ``1 - sigmoid`` for ``K = 1``);
    returns ``sum(w * FL) / sum(w)`` over the pixels whose target is not -1. ``gamma = 0`` and
    ``alpha = None`` give :func:`cross_entropy` exactly.

    ``alpha``: ``None`` (all 1); a float, the factor of the foreground classes with ``1 - alpha``
    for the background (the paper's binary form, 0.25 there); or one factor per class (length
    ``K``, or 2 = (background, foreground) for ``K = 1``).
    """
    _check(logits, target, weights)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    valid = target != IGNORE
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if logits.shape[1] == 1:
        # log p_t = -BCE, computed stably from the logits
        log_pt = -F.binary_cross_entropy_with_logits(logits[:, 0], (safe > 0).to(logits.dtype), reduction="none")
        cls = (safe > 0).long()
        n_alpha = 2
    else:
        log_pt = torch.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        cls = safe
        n_alpha = logits.shape[1]
    loss = -log_pt
    if gamma:
        # 1 - p_t via expm1 keeps precision when p_t -> 1
        loss = loss * (-torch.expm1(log_pt)).clamp_min(0.0).pow(gamma)
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"A scalar alpha must be in [0, 1], got {alpha}.")
            factor = torch.where(cls > 0, torch.full_like(loss, alpha), torch.full_like(loss, 1.0 - alpha))
        else:
            table = torch.as_tensor(list(alpha), dtype=loss.dtype, device=loss.device)
            if table.numel() != n_alpha:
                raise ValueError(f"alpha needs {n_alpha} per-class factors for {logits.shape[1]} output channel(s), "
                                 f"got {table.numel()}.")
            factor = table[cls]
        loss = loss * factor
    w = valid.to(loss.dtype) if weights is None else weights.to(loss.dtype) * valid
    return (loss * w).sum() / w.sum().clamp_min(1e-6)


def soft_iou(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (sum(p t) + s) / (sum(p) + sum(t) - sum(p t) + s)``: soft Jaccard loss of the foreground.

    U-Net 3+'s IoU loss. Batch sums like :func:`soft_dice`; pixels whose target is -1 are left out.
    """
    _check(logits, target, None)
    valid, p, t = _binary(logits, target)
    p, t = p * valid, t * valid
    inter = (p * t).sum()
    return 1.0 - (inter + smooth) / (p.sum() + t.sum() - inter + smooth)


#: Wang et al. 2003's weights of the five MS-SSIM scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_levels(spatial_shape: Sequence[int], window_size: int = 11, max_levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales fit a patch: each scale halves the size (average pooling), and the
    coarsest must still hold a whole window on every axis; at least 1 (a 16 x 16 patch gets 1, a
    64 x 64 patch 3, 176 x 176 all 5)."""
    levels = 1
    while levels < max_levels and all(s // 2 ** levels >= window_size for s in spatial_shape):
        levels += 1
    return levels


def _gaussian_blur(x: torch.Tensor, window_size: int, sigma: float) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of ``(N, 1, *spatial)``; an axis shorter than the window
    gets the largest odd window that fits (so tiny patches still work)."""
    dims = x.ndim - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    for axis in range(dims):
        size = min(window_size, x.shape[2 + axis])
        size -= 1 - size % 2  # odd
        coords = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
        g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = size
        x = conv(x, (g / g.sum()).reshape(shape))
    return x


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
            weights: Sequence[float] = MS_SSIM_WEIGHTS, data_range: float = 1.0,
            k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of ``(B, *spatial)`` maps, 2D or 3D; ``(B,)``.

    Per scale ``j``, with Gaussian-window local means ``mu``, variances ``s^2`` and covariance
    ``s_xy`` ('valid' filtering, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``)::

        l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)      cs = (2 s_xy + C2) / (s_x^2 + s_y^2 + C2)
        MS-SSIM = mean(l cs)_M ^ w_M * prod_{j < M} mean(cs)_j ^ w_j

    The maps are halved by 2x average pooling between scales. When the patch is too small for all
    scales (see :func:`ms_ssim_levels`) only the first ones are used, their weights renormalised
    to sum to 1. Scale values are clamped to ``>= 1e-6`` before the power (negative
    correlations would make it undefined), so the result lies in ``(0, 1]``.
    """
    if x.shape != y.shape or x.ndim not in (3, 4):
        raise ValueError(f"ms_ssim needs two (B, H, W) or (B, D, H, W) maps of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}.")
    levels = ms_ssim_levels(x.shape[1:], window_size, len(weights))
    w = torch.as_tensor(list(weights[:levels]), dtype=x.dtype, device=x.device)
    w = w / w.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    pool = F.avg_pool2d if x.ndim == 3 else F.avg_pool3d
    x, y = x.unsqueeze(1), y.unsqueeze(1)
    result = x.new_ones(x.shape[0])
    for level in range(levels):
        if level:
            x, y = pool(x, 2), pool(y, 2)
        # one blur call for the five statistics
        stats = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y]), window_size, sigma)
        mu_x, mu_y, xx, yy, xy = stats.chunk(5)
        var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
        value = (2 * cov + c2) / (var_x + var_y + c2)
        if level == levels - 1:
            value = value * (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
        value = value.flatten(1).mean(1).clamp_min(1e-6)
        result = result * value.pow(w[level])
    return result


def ms_ssim_loss(logits: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
                 weights: Sequence[float] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """``1 - MS-SSIM(p, t)`` between the foreground probability and the binary foreground target,
    averaged over the batch (see :func:`ms_ssim`); 0 for a perfect prediction.

    Pixels whose target is -1 are masked out by setting the prediction to the target there, so
    the logits under them change nothing (they still take part in the windows as agreeing pixels).
    """
    _check(logits, target, None)
    if logits.ndim not in (4, 5):
        raise ValueError("ms_ssim_loss needs 2D or 3D logits (B, K, H, W) / (B, K, D, H, W), "
                         f"got {tuple(logits.shape)}.")
    valid, p, t = _binary(logits, target)
    p = torch.where(valid > 0, p, t)
    return 1.0 - ms_ssim(p, t, window_size, sigma, weights).mean()


def unet3p_hybrid(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """U-Net 3+'s hybrid loss (Huang et al. 2020): ``focal + (1 - MS-SSIM) + (1 - soft IoU)``.

    Pixel level (focal, with ``weights`` if given), patch level (MS-SSIM) and map level (IoU).
    """
    return focal(logits, target, weights=weights) + ms_ssim_loss(logits, target) + soft_iou(logits, target)


class SegmentationLoss:
    """A weighted sum of named terms: ``ce_weight * cross_entropy + dice_weight * soft_dice
    + focal_weight * focal + iou_weight * soft_iou + ms_ssim_weight * ms_ssim_loss``.

    Calling it returns ``(total, parts)`` where ``parts`` maps each term's name to its
    (detached) value, for logs; terms with weight 0 are not computed. ``focal_gamma`` is the
    focal term's ``gamma``. :meth:`from_spec` builds one from a string such as ``"ce+dice"``,
    ``"2*dice+focal"`` or ``"hybrid"`` (U-Net 3+'s focal + MS-SSIM + IoU).
    """

    #: Names :meth:`from_spec` accepts, and the terms each one adds.
    SPEC_NAMES = {"ce": ("ce",), "dice": ("dice",), "focal": ("focal",), "iou": ("iou",),
                  "ms_ssim": ("ms_ssim",), "ms-ssim": ("ms_ssim",), "hybrid": ("focal", "ms_ssim", "iou")}

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, *, focal_weight: float = 0.0,
                 iou_weight: float = 0.0, ms_ssim_weight: float = 0.0, focal_gamma: float = 2.0):
        factors = (ce_weight, dice_weight, focal_weight, iou_weight, ms_ssim_weight)
        if any(f < 0 for f in factors) or sum(factors) == 0:
            raise ValueError("Loss weights must be non-negative and not all zero.")
        self.terms = {"ce": (ce_weight, lambda lo, t, w: cross_entropy(lo, t, w)),
                      "dice": (dice_weight, lambda lo, t, w: soft_dice(lo, t)),
                      "focal": (focal_weight, lambda lo, t, w: focal(lo, t, gamma=focal_gamma, weights=w)),
                      "iou": (iou_weight, lambda lo, t, w: soft_iou(lo, t)),
                      "ms_ssim": (ms_ssim_weight, lambda lo, t, w: ms_ssim_loss(lo, t))}

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "SegmentationLoss":
        """Parse ``"name+name"`` with optional factors (``"2*dice"``, ``"0.5*ce"``); repeated terms
        add up. Names: ce, dice, focal, iou, ms_ssim (or ms-ssim), hybrid (= focal + ms_ssim + iou).
        ``kwargs`` (e.g. ``focal_gamma``) go to the constructor."""
        valid = ", ".join(sorted(cls.SPEC_NAMES))
        weights = dict.fromkeys(["ce", "dice", "focal", "iou", "ms_ssim"], 0.0)
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"Empty loss spec {spec!r}: join names with '+', e.g. 'ce+dice'; valid names: {valid}.")
        for item in spec.lower().replace(" ", "").split("+"):
            factor_text, _, name = item.rpartition("*")
            try:
                factor = float(factor_text) if factor_text else 1.0
            except ValueError:
                raise ValueError(f"Bad factor {factor_text!r} in loss spec {spec!r}: write e.g. '2*dice'.") from None
            if name not in cls.SPEC_NAMES:
                raise ValueError(f"Unknown loss {name!r} in spec {spec!r}; valid names: {valid}.")
            if not math.isfinite(factor) or factor < 0:
                raise ValueError(f"Factor of {name!r} in loss spec {spec!r} must be finite and >= 0, got {factor}.")
            for term in cls.SPEC_NAMES[name]:
                weights[term] += factor
        if sum(weights.values()) == 0:
            raise ValueError(f"Loss spec {spec!r} gives every term weight 0.")
        return cls(weights["ce"], weights["dice"], focal_weight=weights["focal"], iou_weight=weights["iou"],
                   ms_ssim_weight=weights["ms_ssim"], **kwargs)

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


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``(B, *spatial)`` integer target; values (-1 included) are copied,
    never blended."""
    if tuple(target.shape[1:]) == tuple(size):
        return target
    resized = F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest")
    return resized.squeeze(1).round().to(target.dtype)


def resize_weights(weights: torch.Tensor, target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average a ``(B, *spatial)`` weight map to ``size``, over the counted pixels only.

    Averaging, not nearest: a coarse pixel stands for a block of fine ones, and the U-Net weight
    map's high values sit on ridges 1-2 pixels wide between touching objects, which nearest
    sampling would keep or drop at random by position; the mean keeps their total emphasis.
    Ignored pixels (target -1) are left out of the mean so their weights do not leak in.
    """
    if tuple(weights.shape[1:]) == tuple(size):
        return weights
    valid = (target != IGNORE).to(weights.dtype).unsqueeze(1)
    num = F.interpolate(weights.unsqueeze(1) * valid, size=tuple(size), mode="area")
    den = F.interpolate(valid, size=tuple(size), mode="area")
    mean = F.interpolate(weights.unsqueeze(1), size=tuple(size), mode="area")
    return torch.where(den > 0, num / den.clamp_min(1e-12), mean).squeeze(1)


class DeepSupervisionLoss:
    """``sum_i w_i * base(logits_i, target_i, weights_i)`` over side outputs, ``w_i = decay^i / sum_j decay^j``.

    Called with a list of ``(B, K, *spatial_i)`` logits, highest resolution first (as networks
    return them with side outputs), the full-resolution target and optional weights; the target is
    resized to each level by nearest neighbour (-1 kept), the weights by an area average over the
    counted pixels (:func:`resize_weights`). A single tensor counts as one level. Returns
    ``(total, parts)`` like :class:`SegmentationLoss`: ``parts`` holds each term combined over the
    levels with the same weights, plus ``level<i>`` (that level's base total) when there are several.
    """

    def __init__(self, base: SegmentationLoss | None = None, decay: float = 0.5):
        if not (isinstance(decay, (int, float)) and 0.0 < decay <= 1.0):
            raise ValueError(f"decay must be in (0, 1], got {decay!r}.")
        self.base = base if base is not None else SegmentationLoss()
        self.decay = float(decay)

    def level_weights(self, levels: int) -> list[float]:
        """The normalised weights of ``levels`` levels, finest first (they sum to 1)."""
        if levels < 1:
            raise ValueError("Deep supervision needs at least one output.")
        raw = [self.decay ** i for i in range(levels)]
        return [r / sum(raw) for r in raw]

    def __call__(self, logits, target: torch.Tensor, weights: torch.Tensor | None = None):
        outputs = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        level_weights = self.level_weights(len(outputs))
        total = outputs[0].new_zeros(())
        parts: dict[str, float] = {}
        for i, (out, factor) in enumerate(zip(outputs, level_weights)):
            if out.ndim != target.ndim + 1 or out.shape[0] != target.shape[0]:
                raise ValueError(f"Output {i} {tuple(out.shape)} does not fit the target {tuple(target.shape)}: "
                                 "expected (B, K, *spatial) for a (B, *spatial) target.")
            size = out.shape[2:]
            level_target = resize_target(target, size)
            level_weights_map = None if weights is None else resize_weights(weights, target, size)
            value, level_parts = self.base(out, level_target, level_weights_map)
            total = total + factor * value
            for name, v in level_parts.items():
                parts[name] = parts.get(name, 0.0) + factor * v
            if len(outputs) > 1:
                parts[f"level{i}"] = float(value.detach())
        return total, parts

    def describe(self) -> str:
        return f"deep supervision (decay {self.decay:g}) of {self.base.describe()}"
