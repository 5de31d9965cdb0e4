"""Mobile U-Net: a MobileNetV2 encoder (Sandler et al., CVPR 2018) under a light U-Net decoder,
dimension-generic; the cheapest member of the family on a CPU.

Encoder: MobileNetV2's Table 2 -- a stride-2 3x3 stem (32 channels), then inverted-residual
stages ``(t, c, n, s)`` = (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1) and the final 1x1 convolution (1280 channels in the
classifier; here ``features[-1]``). Channels are scaled by the width multiplier with
MobileNetV2's rounding (multiples of 8, never more than 10 % down); that, and a shallower
encoder, is how it is scaled down for the CPU. ``len(features) - 1`` downsamplings (at most 5,
the backbone's total stride 32) keep the stages up to that resolution.

Defaults: the whole MobileNetV2 encoder at alpha 0.5 (total stride 32) and decoder widths
(8, 16, 24, 32, 64) with a 128-channel final 1x1 conv: about 0.57 M parameters and about a
quarter of the plain U-Net's CPU time (most of it in the full-resolution decoder level).

Decoder: the U-Net's (up-convolution, concatenation) with depthwise-separable double
convolutions. The backbone starts at half resolution, so a light full-resolution branch (one
3x3 conv of the image) provides the level-0 skip (see :class:`~.encoders.BackboneUNet`). No deep
supervision (neither paper has it).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import norm_layer
from .encoders import (BackboneUNet, InvertedResidual, SeparableDoubleConv, _conv, activation, check_common,
                       check_features, make_divisible)
from .registry import ModelSpec, register

#: MobileNetV2 (Sandler et al. 2018, Table 2): stem channels, then (expansion t, channels c, repeats n, stride s).
MOBILENET_V2_STEM = 32
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
MAX_DEPTH = sum(s == 2 for *_, s in MOBILENET_V2) + 1  # the stem's stride too: 5


def mobilenet_v2_levels(spatial_dims: int, in_channels: int, depth: int, width_multiplier: float = 1.0,
                        norm: str = "batch") -> tuple[nn.ModuleList, list[int]]:
    """MobileNetV2's stem and bottleneck stages up to ``depth`` stride-2 steps, grouped per
    resolution level (level ``l`` at ``1 / 2**l``). Returns the levels and their output widths."""
    def conv_bn(cin, cout, k, stride):
        return nn.Sequential(_conv(spatial_dims, cin, cout, k, stride, norm=norm), norm_layer(spatial_dims, norm, cout),
                             activation("relu6"))

    stem = make_divisible(MOBILENET_V2_STEM * width_multiplier)
    levels, widths = [[conv_bn(in_channels, stem, 3, 2)]], []
    prev = stem
    for t, c, n, s in MOBILENET_V2:
        if s == 2:
            if len(levels) == depth:
                break
            widths.append(prev)
            levels.append([])
        c = make_divisible(c * width_multiplier)
        for i in range(n):
            levels[-1].append(InvertedResidual(spatial_dims, prev, c, s if i == 0 else 1, t, norm=norm))
            prev = c
    widths.append(prev)
    return nn.ModuleList(nn.Sequential(*blocks) for blocks in levels), widths


class MobileUNet(BackboneUNet):
    """Mobile U-Net.

    Args:
        spatial_dims, in_channels, out_channels, features: as every
            :class:`~napari_unet.models.encoders.BackboneUNet` takes them.
        width_multiplier: MobileNetV2's alpha for the encoder's channels (0.35 .. 1.4 in the paper).
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"``.

    Input sizes must be multiples of ``2 ** (len(features) - 1)``; the output has the input's size.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (8, 16, 24, 32, 64, 128), width_multiplier: float = 0.5,
                 norm: str = "batch"):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features, 2, MAX_DEPTH + 1)
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be positive (MobileNetV2 uses 0.35 to 1.4), "
                             f"got {width_multiplier}.")
        depth = len(features) - 1
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, int(in_channels), int(out_channels)
        self.config = dict(spatial_dims=spatial_dims, in_channels=self.in_channels, out_channels=self.out_channels,
                           features=features, width_multiplier=float(width_multiplier), norm=norm)
        self._build_parts(spatial_dims, features, norm, lambda: mobilenet_v2_levels(
            spatial_dims, self.in_channels, depth, width_multiplier, norm), "relu6", SeparableDoubleConv)


register(ModelSpec(
    name="mobile-unet", builder=MobileUNet, title="Mobile U-Net (MobileNetV2 encoder)", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(8, 16, 24, 32, 64, 128), width_multiplier=0.5),
    reference="Sandler et al., CVPR 2018 (MobileNetV2); Ronneberger et al., MICCAI 2015",
))
