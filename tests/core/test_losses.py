"""Focal, soft IoU, MS-SSIM, the U-Net 3+ hybrid, loss specs and deep supervision (no Qt; CPU, fast)."""

from __future__ import annotations

import math

import pytest
import torch

from napari_unet.training.losses import (IGNORE, MS_SSIM_WEIGHTS, DeepSupervisionLoss, SegmentationLoss,
                                         cross_entropy, focal, ms_ssim, ms_ssim_levels, ms_ssim_loss,
                                         resize_target, resize_weights, soft_dice, soft_iou, unet3p_hybrid)

LOSSES = {
    "focal": lambda lo, t: focal(lo, t),
    "focal_alpha": lambda lo, t: focal(lo, t, gamma=1.5, alpha=0.25),
    "iou": soft_iou,
    "ms_ssim": ms_ssim_loss,
    "hybrid": unet3p_hybrid,
}


def _disc_target(shape, batch=1, radius_fraction=0.3):
    """(B, *shape) binary target: a centred disc / ball."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in shape], indexing="ij")
    r2 = sum((g / s) ** 2 for g, s in zip(grids, shape))
    return (r2 < radius_fraction ** 2).long().expand(batch, *shape).clone()


def _perfect_logits(target, channels=2, scale=30.0):
    sign = 2.0 * (target > 0).float() - 1.0
    if channels == 1:
        return (scale * sign).unsqueeze(1)
    logits = torch.zeros(target.shape[0], channels, *target.shape[1:])
    logits[:, 1] = scale * sign
    return logits


# -- focal -----------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3])
def test_focal_with_gamma_zero_is_cross_entropy(channels):
    torch.manual_seed(0)
    logits = torch.randn(2, channels, 5, 6)
    target = torch.randint(0, max(2, channels), (2, 5, 6))
    target[0, 0, :3] = IGNORE
    w = torch.rand(2, 5, 6) + 0.5
    assert focal(logits, target, gamma=0.0).item() == pytest.approx(cross_entropy(logits, target).item(), rel=1e-6)
    assert focal(logits, target, gamma=0.0, weights=w).item() == pytest.approx(
        cross_entropy(logits, target, w).item(), rel=1e-6)


def test_focal_hand_values():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 2.0  # pixel 2: p(foreground) = e^2 / (1 + e^2)
    target = torch.tensor([[[0, 1]]])
    p2 = math.exp(2) / (1 + math.exp(2))
    fl1 = 0.5 ** 2 * math.log(2)  # p_t = 0.5
    fl2 = (1 - p2) ** 2 * -math.log(p2)
    assert focal(logits, target).item() == pytest.approx((fl1 + fl2) / 2, rel=1e-5)
    # scalar alpha: alpha on the foreground, 1 - alpha on the background
    assert focal(logits, target, alpha=0.25).item() == pytest.approx((0.75 * fl1 + 0.25 * fl2) / 2, rel=1e-5)
    assert focal(logits, target, alpha=[2.0, 1.0]).item() == pytest.approx((2 * fl1 + fl2) / 2, rel=1e-5)
    # confident right pixels are down-weighted relative to cross-entropy
    assert focal(logits, target).item() < cross_entropy(logits, target).item()
    with pytest.raises(ValueError, match="alpha"):
        focal(logits, target, alpha=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="gamma"):
        focal(logits, target, gamma=-1.0)


# -- IoU and MS-SSIM -------------------------------------------------------------------------

def test_soft_iou_hand_values():
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1, 1], [0, 0]]])
    # 1 - (1 + 1) / (2 + 2 - 1 + 1)
    assert soft_iou(logits, target).item() == pytest.approx(0.5, rel=1e-6)
    assert soft_iou(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_iou(_perfect_logits(1 - target), target).item() > 0.5


@pytest.mark.parametrize("channels", [1, 2])
def test_ms_ssim_zero_for_perfect_and_grows_with_error(channels):
    target = _disc_target((64, 64), batch=2)
    perfect = ms_ssim_loss(_perfect_logits(target, channels), target).item()
    assert perfect == pytest.approx(0.0, abs=1e-5)
    noise = torch.randn(2, channels, 64, 64, generator=torch.Generator().manual_seed(0))
    noisy = _perfect_logits(target, channels, scale=2.0) + noise
    blank = torch.full((2, channels, 64, 64), -5.0)
    inverted = _perfect_logits(1 - target, channels)
    values = [ms_ssim_loss(lo, target).item() for lo in (noisy, blank, inverted)]
    assert 0.0 < values[0] < values[1] <= 1.0 and values[2] > values[0]


def test_ms_ssim_scales_fall_back_on_small_patches():
    assert ms_ssim_levels((176, 176)) == 5 and ms_ssim_levels((64, 64)) == 3 and ms_ssim_levels((16, 16)) == 1
    assert ms_ssim_levels((8, 64, 64)) == 1 and ms_ssim_levels((32, 32, 32)) == 2
    x = torch.rand(1, 16, 16)
    # one scale: MS-SSIM is the plain SSIM (its weight renormalised to 1)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim(x, x, weights=(1.0,)).item() == pytest.approx(1.0, abs=1e-5)
    y = torch.rand(1, 16, 16)
    assert ms_ssim(x, y).item() == pytest.approx(ms_ssim(x, y, weights=(7.0,)).item(), rel=1e-6)
    target = _disc_target((16, 16))
    assert ms_ssim_loss(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-5)
    # a patch smaller than the window still works (the window shrinks)
    tiny = _disc_target((5, 7))
    assert math.isfinite(ms_ssim_loss(torch.randn(1, 2, 5, 7), tiny).item())
    assert len(MS_SSIM_WEIGHTS) == 5


def test_3d_inputs():
    target = _disc_target((12, 24, 24))
    logits = torch.randn(1, 2, 12, 24, 24)
    for name, fn in LOSSES.items():
        assert math.isfinite(fn(logits, target).item()), name
        assert fn(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-5) or name.startswith("focal")
    total, parts = SegmentationLoss.from_spec("ce+dice+hybrid")(logits, target)
    assert set(parts) == {"ce", "dice", "focal", "iou", "ms_ssim"} and math.isfinite(total.item())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("channels", [1, 2])
def test_gradients_finite_and_nonzero(name, channels):
    torch.manual_seed(1)
    target = _disc_target((32, 32), batch=2)
    target[:, :4] = IGNORE
    logits = torch.randn(2, channels, 32, 32, requires_grad=True)
    LOSSES[name](logits, target).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # no gradient reaches the logits under ignored pixels
    assert grad[:, :, :4].abs().max() == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_do_not_change_the_value(name):
    torch.manual_seed(2)
    target = _disc_target((32, 32), batch=2)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[0, 5:15, 3:20] = True
    ignored[1, :, 28:] = True
    target[ignored] = IGNORE
    logits = torch.randn(2, 2, 32, 32)
    changed = logits.clone()
    changed[ignored.unsqueeze(1).expand_as(logits)] = 50.0 * torch.randn(int(ignored.sum()) * 2)
    fn = LOSSES[name]
    assert fn(changed, target).item() == pytest.approx(fn(logits, target).item(), rel=1e-6, abs=1e-7)


# -- SegmentationLoss specs ------------------------------------------------------------------

def test_segmentation_loss_defaults_and_new_terms():
    loss = SegmentationLoss()
    assert loss.describe() == "1 x ce + 1 x dice"
    logits, target = torch.randn(2, 2, 16, 16), torch.randint(0, 2, (2, 16, 16))
    total, parts = loss(logits, target)
    assert set(parts) == {"ce", "dice"}
    assert total.item() == pytest.approx(parts["ce"] + parts["dice"], rel=1e-6)
    only_focal = SegmentationLoss(0, 0, focal_weight=2.0)
    total, parts = only_focal(logits, target)
    assert set(parts) == {"focal"} and total.item() == pytest.approx(2 * focal(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError):
        SegmentationLoss(0, 0)
    with pytest.raises(ValueError):
        SegmentationLoss(1, 1, iou_weight=-1)


def test_from_spec_parsing():
    assert SegmentationLoss.from_spec("ce+dice").describe() == "1 x ce + 1 x dice"
    assert SegmentationLoss.from_spec("ce").describe() == "1 x ce"
    assert SegmentationLoss.from_spec("dice").describe() == "1 x dice"
    assert SegmentationLoss.from_spec("hybrid").describe() == "1 x focal + 1 x iou + 1 x ms_ssim"
    assert SegmentationLoss.from_spec(" CE + 2*dice + focal ").describe() == "1 x ce + 2 x dice + 1 x focal"
    assert SegmentationLoss.from_spec("0.5*ms-ssim+iou+iou").describe() == "2 x iou + 0.5 x ms_ssim"
    logits, target = torch.randn(1, 2, 16, 16), torch.randint(0, 2, (1, 16, 16))
    total, parts = SegmentationLoss.from_spec("hybrid")(logits, target)
    assert total.item() == pytest.approx(unet3p_hybrid(logits, target).item(), rel=1e-5)
    assert SegmentationLoss.from_spec("focal", focal_gamma=0.0)(logits, target)[0].item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6)
    for bad, match in [("ce+lovasz", "valid names: ce, dice, focal, hybrid, iou, ms-ssim, ms_ssim"),
                       ("", "valid names"), ("ce+", "Unknown loss ''"), ("x*dice", "Bad factor"),
                       ("-1*dice", ">= 0"), ("0*dice", "weight 0")]:
        with pytest.raises(ValueError, match=match):
            SegmentationLoss.from_spec(bad)


# -- deep supervision ------------------------------------------------------------------------

def test_level_weights_are_normalised_and_decay():
    ds = DeepSupervisionLoss(SegmentationLoss(), decay=0.5)
    assert ds.level_weights(1) == [1.0]
    w = ds.level_weights(4)
    assert sum(w) == pytest.approx(1.0) and w == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert DeepSupervisionLoss(decay=1.0).level_weights(3) == pytest.approx([1 / 3] * 3)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            DeepSupervisionLoss(decay=bad)


def test_single_level_equals_the_base_loss():
    torch.manual_seed(3)
    base = SegmentationLoss.from_spec("ce+dice+focal")
    logits, target = torch.randn(2, 2, 16, 16), torch.randint(-1, 2, (2, 16, 16))
    w = torch.rand(2, 16, 16) + 0.5
    expected, expected_parts = base(logits, target, w)
    for given in ([logits], logits):
        total, parts = DeepSupervisionLoss(base)(given, target, w)
        assert total.item() == pytest.approx(expected.item(), rel=1e-6) and parts == pytest.approx(expected_parts)


def test_deep_supervision_combines_resized_levels():
    torch.manual_seed(4)
    base = SegmentationLoss()
    target = torch.randint(0, 2, (2, 16, 16))
    target[:, :4, :4] = IGNORE
    w = torch.rand(2, 16, 16) + 0.5
    outputs = [torch.randn(2, 2, 16, 16, requires_grad=True), torch.randn(2, 2, 8, 8, requires_grad=True),
               torch.randn(2, 2, 4, 4, requires_grad=True)]
    ds = DeepSupervisionLoss(base, decay=0.5)
    total, parts = ds(outputs, target, w)
    levels = [base(o, resize_target(target, o.shape[2:]), resize_weights(w, target, o.shape[2:]))[0].item()
              for o in outputs]
    assert total.item() == pytest.approx(sum(f * v for f, v in zip(ds.level_weights(3), levels)), rel=1e-6)
    assert [parts[f"level{i}"] for i in range(3)] == pytest.approx(levels)
    total.backward()
    assert all(torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outputs)
    with pytest.raises(ValueError, match="does not fit"):
        ds([torch.randn(3, 2, 8, 8)], target)


def test_target_resizing_keeps_the_ignore_value():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 4:, 4:] = 1
    target[0, :4, :4] = IGNORE
    small = resize_target(target, (4, 4))
    assert small.dtype == target.dtype
    assert set(small.unique().tolist()) == {IGNORE, 0, 1}
    assert (small[0, :2, :2] == IGNORE).all() and (small[0, 2:, 2:] == 1).all()
    assert resize_target(target[:, None].expand(1, 4, 8, 8), (2, 4, 4)).unique().tolist() == [IGNORE, 0, 1]
    # weights: the mean over counted pixels of each block; ignored pixels' weights do not leak in
    w = torch.ones(1, 8, 8)
    target[0, 1, 1] = 0  # block (0, 0) of the 4 x 4 map: three ignored pixels and one counted
    w[0, 0, 0] = 100.0  # under an ignored pixel
    w[0, 6, 6] = 5.0
    small_w = resize_weights(w, target, (4, 4))
    assert small_w[0, 0, 0].item() == pytest.approx(1.0) and small_w[0, 3, 3].item() == pytest.approx(2.0)
