"""The Residual U-Net (ResUNet) of Zhang, Liu & Wang ("Road extraction by deep residual U-Net",
IEEE GRSL 2018), dimension-generic.

The U-Net's double convolutions become pre-activation residual units with identity mappings
(He et al., ECCV 2016): ``BN-ReLU-conv-BN-ReLU-conv`` plus the identity (or a 1x1 projection
where the width or size changes), in the encoder, the bridge and the decoder.

Downsampling follows the paper: no pooling; the first convolution of each encoder unit after the
first has stride 2 (and so has its 1x1 projection shortcut). The first unit sees the raw image,
so it has no leading ``BN-ReLU``. Decoding follows the paper too: the level below is upsampled by
interpolation (``"nearest"``, the default, or ``"linear"``; ``"transpose"`` gives the U-Net's
up-convolution instead), concatenated with the skip and passed through one residual unit;
a 1x1 convolution gives the logits. The paper has no deep supervision.

Defaults: widths (12, 24, 48, 96, 192) (the paper: 64, 128, 256, 512): the interpolating
decoder's blocks see the full width of the level below plus the skip, and one norm per unit
(on its input) cannot be folded into a convolution at inference, so at the U-Net's widths
(16 .. 256) it costs about 1.5x the plain U-Net's CPU time; at these about 1.2x.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from .base import SegmentationNet
from .blocks import head
from .encoders import ResidualUnit, UNetDecoder, check_common, check_features
from .registry import ModelSpec, register


class ResUNet(SegmentationNet):
    """Residual U-Net.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels (1 for grey, 3 for RGB).
        out_channels: classes (2 = background/foreground; 3 = background/interior/boundary).
        features: channels per level, top to bottom (the last is the bridge);
            ``len(features) - 1`` stride-2 downsamplings. The paper uses ``(64, 128, 256, 512)``.
        norm: ``"batch"`` (default, the paper's), ``"instance"``, ``"group"`` or ``"none"``.
        upsample: ``"nearest"`` (default), ``"linear"`` or ``"transpose"``.

    Input sizes must be multiples of ``2 ** (len(features) - 1)``; the output has the input's size.
    """

    output_heads = ("head",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (12, 24, 48, 96, 192), norm: str = "batch", upsample: str = "nearest"):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features)
        depth = len(features) - 1
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, int(in_channels), int(out_channels)
        self.config = dict(spatial_dims=spatial_dims, in_channels=self.in_channels, out_channels=self.out_channels,
                           features=features, norm=norm, upsample=upsample)
        self.encoders = nn.ModuleList()
        prev = self.in_channels
        for level, f in enumerate(features):
            self.encoders.append(ResidualUnit(spatial_dims, prev, f, stride=1 if level == 0 else 2, norm=norm,
                                              preactivate=level > 0))
            prev = f
        self.decoder = UNetDecoder(spatial_dims, features, features[:-1],
                                   partial(ResidualUnit, spatial_dims, norm=norm), upsample=upsample)
        self.head = head(spatial_dims, features[0], self.out_channels)
        self.size_divisor = (2 ** depth,) * spatial_dims
        self.margin = 0

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        """``(B, in_channels, *S) -> (B, out_channels, *S)`` logits (``[logits]`` with ``side_outputs``)."""
        self.check_input(x)
        features = []
        for unit in self.encoders:
            x = unit(x)
            features.append(x)
        logits = self.head(self.decoder(features))
        return [logits] if side_outputs else logits


register(ModelSpec(
    name="resunet", builder=ResUNet, title="Residual U-Net", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(12, 24, 48, 96, 192), upsample="nearest"),
    reference="Zhang, Liu & Wang, IEEE GRSL 2018",
))
