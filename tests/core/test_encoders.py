"""The encoder blocks: shapes, residual paths, the backbones' published sizes and scaling rules."""

import pytest
import torch
from torch import nn

from napari_unet.inference.predictor import fuse_batchnorm
from napari_unet.models.blocks import DoubleConv
from napari_unet.models.eff_unet import efficientnet_levels
from napari_unet.models.encoders import (DepthwiseSeparableConv, InvertedResidual, MBConv, ResidualUnit,
                                         SeparableDoubleConv, SqueezeExcitation, UNetDecoder, drop_connect,
                                         make_divisible, round_filters, round_repeats)
from napari_unet.models.mobile_unet import mobilenet_v2_levels


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def randomize_norms(module):
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return module


# -- the backbones against their papers -------------------------------------------------------------

def test_mobilenet_v2_matches_the_published_network():
    # torchvision's mobilenet_v2 (3,504,872 parameters) less its last 1x1 conv + BN (412,160)
    # and its classifier (1,281,000): the stem and the 17 bottlenecks
    levels, widths = mobilenet_v2_levels(2, 3, 5, 1.0)
    assert n_params(levels) == 1_811_712
    assert widths == [16, 24, 32, 96, 320]
    assert sum(isinstance(m, InvertedResidual) for m in levels.modules()) == 17
    # alpha = 0.35 with MobileNetV2's rounding: stem 16, stages 8, 8, 16, 24, 32, 56, 112
    _, widths = mobilenet_v2_levels(2, 3, 5, 0.35)
    assert widths == [8, 8, 16, 32, 112]
    assert nn.Sequential(*levels)(torch.zeros(1, 3, 64, 64)).shape == (1, 320, 2, 2)


def test_efficientnet_b0_matches_the_published_network():
    # torchvision's efficientnet_b0 (5,288,548) less its head conv + BN (412,160) and classifier
    # (1,281,000): the stem and the 16 MBConv blocks
    levels, widths = efficientnet_levels(2, 3, 5)
    assert n_params(levels) == 3_595_388
    assert widths == [16, 24, 40, 112, 320]
    blocks = [m for m in levels.modules() if isinstance(m, MBConv)]
    assert len(blocks) == 16
    assert [b.depthwise[0].kernel_size[0] for b in blocks] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    # drop-connect rises linearly from 0 to rate * 15/16
    assert blocks[0].drop_connect_rate == 0.0 and blocks[-1].drop_connect_rate == pytest.approx(0.2 * 15 / 16)


def test_compound_scaling_rules():
    # EfficientNet-B4 (width 1.4, depth 1.8): stem 48, stages 24, 32, 56, 112, 160, 272, 448, 32 blocks
    assert [round_filters(c, 1.4) for c in (32, 16, 24, 40, 80, 112, 192, 320)] == [48, 24, 32, 56, 112, 160, 272, 448]
    assert [round_repeats(n, 1.8) for n in (1, 2, 2, 3, 3, 4, 1)] == [2, 4, 4, 6, 6, 8, 2]
    assert [round_filters(c, 1.0) for c in (32, 16, 24, 40)] == [32, 16, 24, 40]
    assert make_divisible(11.2) == 16  # 8 would be more than 10 % below 11.2
    assert make_divisible(3.0) == 8 and make_divisible(20.0) == 24
    levels, _ = efficientnet_levels(2, 3, 5, 1.4, 1.8)
    assert sum(isinstance(m, MBConv) for m in levels.modules()) == 32


def test_truncated_backbones_keep_the_stages_of_their_levels():
    levels, widths = efficientnet_levels(2, 1, 4, 1.0, 1.0)
    # levels 1..4; the 112-channel stage (stride 1) stays with the 80-channel one at 1/16
    assert widths == [16, 24, 40, 112] and len(levels) == 4
    assert nn.Sequential(*levels)(torch.zeros(1, 1, 32, 32)).shape == (1, 112, 2, 2)
    levels, widths = mobilenet_v2_levels(3, 1, 1, 1.0)
    assert widths == [16] and nn.Sequential(*levels)(torch.zeros(1, 1, 4, 4, 4)).shape == (1, 16, 2, 2, 2)


# -- blocks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_residual_unit_identity_and_projection(dims):
    torch.manual_seed(0)
    x = torch.randn(2, 4, *(8,) * dims)
    same = ResidualUnit(dims, 4, 4).eval()
    assert isinstance(same.shortcut, nn.Identity)
    # zero the last conv: F(x) = 0, the unit is exactly the identity mapping
    nn.init.zeros_(same.body[-1].weight)
    assert torch.equal(same(x), x)
    down = ResidualUnit(dims, 4, 6, stride=2)
    assert down(x).shape == (2, 6, *(4,) * dims)
    assert down.shortcut[0].stride == (2,) * dims and down.body[2].stride == (2,) * dims
    # pre-activation: norm and ReLU first; without it (the first unit) the unit starts with the conv
    assert isinstance(same.body[0], nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)
    assert isinstance(ResidualUnit(dims, 1, 4, preactivate=False).body[0], (nn.Conv2d, nn.Conv3d))


def test_residual_unit_without_norm_keeps_its_input():
    torch.manual_seed(0)
    unit = ResidualUnit(2, 4, 4, norm="none")
    x = torch.randn(1, 4, 8, 8)
    before = x.clone()
    out = unit(x)
    assert torch.equal(x, before)  # the in-place ReLU must not overwrite the identity path's input
    assert torch.allclose(out, unit.body(before) + before)


@pytest.mark.parametrize("dims", [2, 3])
def test_inverted_residual(dims):
    x = torch.randn(2, 8, *(8,) * dims)
    block = InvertedResidual(dims, 8, 8, 1, 6)
    assert block.residual and block.body[0].out_channels == 48
    nn.init.zeros_(block.body[-1].weight)  # zero the projection's norm: out = x
    assert torch.equal(block(x), x)
    down = InvertedResidual(dims, 8, 16, 2, 6)
    assert not down.residual and down(x).shape == (2, 16, *(4,) * dims)
    # the bottleneck is linear: it ends with the projection's norm, no activation
    assert isinstance(down.body[-1], (nn.BatchNorm2d, nn.BatchNorm3d))
    # expansion 1 has no expansion convolution: depthwise first
    assert InvertedResidual(dims, 8, 8, 1, 1).body[0].groups == 8
    assert all(isinstance(m, nn.ReLU6) for m in block.body if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU)))


@pytest.mark.parametrize("dims", [2, 3])
def test_mbconv_and_squeeze_excitation(dims):
    torch.manual_seed(0)
    x = torch.randn(2, 8, *(8,) * dims)
    block = MBConv(dims, 8, 8, kernel_size=5, expand_ratio=6, se_ratio=0.25)
    assert block.residual and block.depthwise[0].kernel_size == (5,) * dims
    assert block.se.reduce.out_channels == 2 and block.se.expand.out_channels == 48
    assert block(x).shape == x.shape
    assert MBConv(dims, 8, 12, stride=2)(x).shape == (2, 12, *(4,) * dims)
    assert isinstance(MBConv(dims, 8, 8, se_ratio=0).se, nn.Identity)
    se = SqueezeExcitation(dims, 8, 2)
    y = se(x.abs())
    scale = y / x.abs()  # one factor in (0, 1) per sample and channel
    assert torch.all((scale > 0) & (scale < 1))
    assert torch.allclose(scale, scale.flatten(2)[..., :1].reshape(scale.shape[:2] + (1,) * dims).expand_as(scale))


def test_drop_connect_is_stochastic_depth():
    torch.manual_seed(0)
    x = torch.ones(4000, 1, 2, 2)
    assert torch.equal(drop_connect(x, 0.3, training=False), x)
    y = drop_connect(x, 0.3, training=True)
    kept = (y[:, 0, 0, 0] > 0).float()
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.7])
    assert 0.66 < kept.mean() < 0.74  # keep probability 0.7, per sample
    assert torch.all(y.flatten(1).min(1).values == y.flatten(1).max(1).values)  # whole samples
    block = MBConv(2, 8, 8, drop_connect_rate=0.5).eval()
    z = torch.randn(2, 8, 8, 8)
    assert torch.equal(block(z), block(z))


def test_depthwise_separable_blocks():
    block = DepthwiseSeparableConv(2, 8, 16, stride=2)
    assert block[0].groups == 8 and block[3].kernel_size == (1, 1)
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    # about 8 * (9 + 16) weights instead of 8 * 9 * 16
    assert n_params(block[0]) + n_params(block[3]) == 8 * 9 + 8 * 16
    assert SeparableDoubleConv(3, 8, 4)(torch.randn(1, 8, 4, 4, 4)).shape == (1, 4, 4, 4, 4)


@pytest.mark.parametrize("upsample", ["transpose", "nearest", "linear"])
def test_decoder_over_any_encoder(upsample):
    feats = [torch.randn(1, 3, 16, 24), torch.randn(1, 5, 8, 12), torch.randn(1, 7, 4, 6)]
    dec = UNetDecoder(2, [3, 5, 7], [4, 6], lambda i, o: DoubleConv(2, i, o), upsample=upsample)
    assert dec(feats).shape == (1, 4, 16, 24)
    # the first block sees the skip plus the upsampled level below
    assert dec.blocks[0][0][0].in_channels == 5 + (6 if upsample == "transpose" else 7)
    with pytest.raises(ValueError, match="upsample"):
        UNetDecoder(2, [3, 5], [4], lambda i, o: DoubleConv(2, i, o), upsample="bicubic")
    with pytest.raises(ValueError, match="decoder widths"):
        UNetDecoder(2, [3, 5, 7], [4], lambda i, o: DoubleConv(2, i, o))


@pytest.mark.parametrize("make", [
    lambda d: ResidualUnit(d, 4, 6, stride=2),
    lambda d: InvertedResidual(d, 4, 4, 1, 6),
    lambda d: MBConv(d, 4, 6, kernel_size=5, stride=2),
    lambda d: DepthwiseSeparableConv(d, 4, 6),
], ids=["residual", "inverted", "mbconv", "separable"])
def test_batchnorm_folding_is_exact(make):
    torch.manual_seed(0)
    for dims in (2, 3):
        block = randomize_norms(make(dims)).eval()
        x = torch.randn(2, 4, *(8,) * dims)
        fused = fuse_batchnorm(block)
        assert torch.allclose(fused(x), block(x), atol=1e-5)
        left = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in fused.modules())
        # only a pre-activation unit's input norm stays (the identity path needs the input as it is)
        assert left == (1 if isinstance(block, ResidualUnit) else 0)
