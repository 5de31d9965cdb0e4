"""Eff-UNet (Baheti, Innani, Gajre & Talbar, CVPR Workshops 2020): an EfficientNet encoder (Tan &
Le, ICML 2019) under the U-Net decoder, dimension-generic.

Encoder: EfficientNet-B0's table -- a stride-2 3x3 stem (32 channels), then MBConv stages
``(expansion, kernel, stride, channels, repeats)`` = (1, 3, 1, 16, 1), (6, 3, 2, 24, 2),
(6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1), each
with squeeze-and-excitation (ratio 0.25) and SiLU, and the final 1x1 convolution (1280 channels
in the classifier; here ``features[-1]``). Compound scaling: channels by ``width_coefficient``
and repeats by ``depth_coefficient`` with EfficientNet's rounding (``round_filters``: multiples
of 8, never more than 10 % down; ``round_repeats``: ceil). B0 is (1.0, 1.0); e.g. B4 is
(1.4, 1.8). ``len(features) - 1`` downsamplings (at most 5, the backbone's total stride 32) keep
the stages up to that resolution. Drop-connect (stochastic depth) of the residual branches
rises linearly over the blocks to ``drop_connect_rate`` as in EfficientNet.

Defaults: the whole B0 encoder (3.6 M parameters, total stride 32) under a U-Net decoder of
widths (16, 24, 32, 48, 96) with a 128-channel final 1x1 conv: about 4.1 M parameters and a bit
faster than the plain U-Net on a CPU.

Decoder: the U-Net's -- up-convolution, concatenation, two 3x3 conv-BN-ReLU. The backbone starts
at half resolution, so a light full-resolution branch (one 3x3 conv of the image) provides the
level-0 skip (see :class:`~.encoders.BackboneUNet`). No deep supervision (neither paper has it).

Squeeze-and-excitation pools over the whole input, so tiled prediction is not exactly equal to
an untiled one (``se_ratio=0`` leaves SE out and makes it so).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import DoubleConv, norm_layer
from .encoders import (BackboneUNet, MBConv, _conv, activation, check_common, check_features, round_filters,
                       round_repeats)
from .registry import ModelSpec, register

#: EfficientNet-B0 (Tan & Le 2019, Table 1): stem channels, then
#: (expansion, kernel, stride, channels, repeats) per stage.
EFFICIENTNET_B0_STEM = 32
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
MAX_DEPTH = sum(stage[2] == 2 for stage in EFFICIENTNET_B0) + 1  # the stem's stride too: 5


def efficientnet_levels(spatial_dims: int, in_channels: int, depth: int, width_coefficient: float = 1.0,
                        depth_coefficient: float = 1.0, se_ratio: float = 0.25, drop_connect_rate: float = 0.2,
                        norm: str = "batch") -> tuple[nn.ModuleList, list[int]]:
    """EfficientNet-B0's stem and MBConv stages, compound-scaled, up to ``depth`` stride-2 steps,
    grouped per resolution level (level ``l`` at ``1 / 2**l``). Returns the levels and their
    output widths."""
    stages = []  # (expansion, kernel, stride, channels, repeats) kept for this depth, scaled
    level = 1
    for e, k, s, c, n in EFFICIENTNET_B0:
        level += s == 2
        if level > depth:
            break
        stages.append((e, k, s, round_filters(c, width_coefficient), round_repeats(n, depth_coefficient)))
    total = sum(stage[4] for stage in stages)
    stem = round_filters(EFFICIENTNET_B0_STEM, width_coefficient)
    levels = [[nn.Sequential(_conv(spatial_dims, in_channels, stem, 3, 2, norm=norm),
                             norm_layer(spatial_dims, norm, stem), activation("silu"))]]
    widths, prev, index = [], stem, 0
    for e, k, s, c, n in stages:
        if s == 2:
            widths.append(prev)
            levels.append([])
        for i in range(n):
            levels[-1].append(MBConv(spatial_dims, prev, c, k, s if i == 0 else 1, e, se_ratio,
                                     drop_connect_rate * index / total, norm))
            prev, index = c, index + 1
    widths.append(prev)
    return nn.ModuleList(nn.Sequential(*blocks) for blocks in levels), widths


class EffUNet(BackboneUNet):
    """Eff-UNet.

    Args:
        spatial_dims, in_channels, out_channels, features: as every
            :class:`~napari_unet.models.encoders.BackboneUNet` takes them.
        width_coefficient, depth_coefficient: EfficientNet's compound scaling of the encoder
            (the default 1.0, 1.0 is B0; e.g. 0.5, 0.5 for a lighter one, 1.4, 1.8 for B4).
        se_ratio: squeeze-and-excitation width relative to each block's input (0.25; 0 = no SE).
        drop_connect_rate: stochastic-depth rate of the last block (0.2 in EfficientNet).
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"``.

    Input sizes must be multiples of ``2 ** (len(features) - 1)``; the output has the input's size.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 24, 32, 48, 96, 128), width_coefficient: float = 1.0,
                 depth_coefficient: float = 1.0, se_ratio: float = 0.25, drop_connect_rate: float = 0.2,
                 norm: str = "batch"):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features, 2, MAX_DEPTH + 1)
        if not (width_coefficient > 0 and depth_coefficient > 0):
            raise ValueError("width_coefficient and depth_coefficient must be positive (EfficientNet-B0 uses 1.0, "
                             f"1.0), got {width_coefficient}, {depth_coefficient}.")
        if not 0.0 <= se_ratio <= 1.0:
            raise ValueError(f"se_ratio must be in [0, 1] (EfficientNet uses 0.25), got {se_ratio}.")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1) (EfficientNet uses 0.2), got {drop_connect_rate}.")
        depth = len(features) - 1
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, int(in_channels), int(out_channels)
        self.config = dict(spatial_dims=spatial_dims, in_channels=self.in_channels, out_channels=self.out_channels,
                           features=features, width_coefficient=float(width_coefficient),
                           depth_coefficient=float(depth_coefficient), se_ratio=float(se_ratio),
                           drop_connect_rate=float(drop_connect_rate), norm=norm)
        self._build_parts(spatial_dims, features, norm, lambda: efficientnet_levels(
            spatial_dims, self.in_channels, depth, width_coefficient, depth_coefficient, se_ratio, drop_connect_rate,
            norm), "silu", DoubleConv)


register(ModelSpec(
    name="eff-unet", builder=EffUNet, title="Eff-UNet (EfficientNet encoder)", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(16, 24, 32, 48, 96, 128), width_coefficient=1.0,
                  depth_coefficient=1.0),
    reference="Baheti et al., CVPR Workshops 2020; Tan & Le, ICML 2019 (EfficientNet)",
))
