"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015), dimension-generic.

Each level is two 3x3 convolutions (+ norm, ReLU); the encoder halves the size with 2x2 max
pooling, the decoder doubles it with a 2x2 up-convolution and concatenates the encoder's
feature map at the same level. With ``padding="valid"`` (the paper) every convolution loses a
pixel per side, the skip connections are centre-cropped and the output is smaller than the
input by ``2 * margin`` per axis (572 -> 388 with the paper's depth); the tiled predictor then
uses the paper's overlap-tile strategy with mirrored borders. ``padding="same"`` keeps the size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import SegmentationNet
from .blocks import DoubleConv, UpConv, center_crop, check_common, check_features, check_strides, head, max_pool_nd
from .registry import ModelSpec, register


class UNet(SegmentationNet):
    """U-Net.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels (1 for grey, 3 for RGB).
        out_channels: classes (2 = background/foreground; 3 = background/interior/boundary).
        features: channels per level, top to bottom; ``len(features) - 1`` poolings. The paper
            uses ``(64, 128, 256, 512, 1024)``.
        padding: ``"same"`` or ``"valid"`` (the paper's).
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"`` (the paper's).
        strides: pooling factor per level, an int or one per axis (e.g. ``(1, 2, 2)`` for
            thick-slice 3D stacks); default 2 everywhere.
    """

    output_heads = ("head",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), padding: str = "same",
                 norm: str = "batch", strides: Sequence[int | Sequence[int]] | None = None):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features)
        depth = len(features) - 1
        self.strides = check_strides(strides, depth, spatial_dims)
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.padding = padding
        self.config = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                           features=features, padding=padding, norm=norm,
                           strides=[list(s) for s in self.strides])

        pool = max_pool_nd(spatial_dims)
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        prev = in_channels
        for level, f in enumerate(features):
            self.encoders.append(DoubleConv(spatial_dims, prev, f, padding, norm))
            if level < depth:
                self.pools.append(pool(self.strides[level], self.strides[level]))
            prev = f
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(UpConv(spatial_dims, features[level + 1], features[level], self.strides[level]))
            self.decoders.append(DoubleConv(spatial_dims, 2 * features[level], features[level], padding, norm))
        self.head = head(spatial_dims, features[0], out_channels)

        self.size_divisor = tuple(math.prod(s[a] for s in self.strides) for a in range(spatial_dims))
        if padding == "valid":
            probe = self.valid_input_shape((1,) * spatial_dims, _margin_known=False)
            out = self.output_shape(probe)
            self.margin = (probe[0] - out[0]) // 2
        else:
            self.margin = 0

    # -- shapes -------------------------------------------------------------------------
    def _axis_output(self, n: int, axis: int) -> int:
        if self.padding == "same":
            if n % self.size_divisor[axis]:
                raise ValueError(f"size {n} is not a multiple of {self.size_divisor[axis]}")
            return n
        s = n
        for st in self.strides:
            s -= 4
            if s <= 0 or s % st[axis]:
                raise ValueError(f"size {n} does not fit the valid-padding U-Net")
            s //= st[axis]
        s -= 4
        for st in reversed(self.strides):
            if s <= 0:
                raise ValueError(f"size {n} is too small")
            s = s * st[axis] - 4
        if s <= 0:
            raise ValueError(f"size {n} is too small")
        return s

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape; ``ValueError`` if it does not fit."""
        return tuple(self._axis_output(int(n), a) for a, n in enumerate(input_shape))

    def valid_input_shape(self, min_shape: Sequence[int], _margin_known: bool = True) -> tuple[int, ...]:
        """The smallest input shape >= ``min_shape`` (per axis) that the network accepts."""
        shape = []
        for axis, n in enumerate(min_shape):
            n = max(int(n), 1)
            if self.padding == "same":
                d = self.size_divisor[axis]
                shape.append(-(-n // d) * d)
                continue
            while True:
                try:
                    self._axis_output(n, axis)
                    break
                except ValueError:
                    n += 1
            shape.append(n)
        return tuple(shape)

    @property
    def receptive_radius(self) -> tuple[int, ...]:
        """Pixels per side that influence an output pixel (an upper bound), per axis."""
        radii = []
        for axis in range(self.spatial_dims):
            r, jump = 0.0, 1.0
            for st in self.strides:
                r += 2 * jump  # two 3x3 convolutions
                r += (st[axis] - 1) * jump  # pooling window
                jump *= st[axis]
            r += 2 * jump
            for st in reversed(self.strides):
                r += (st[axis] - 1) * jump  # up-convolution window
                jump /= st[axis]
                r += 2 * jump
            radii.append(int(math.ceil(r)))
        return tuple(radii)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        """``(B, in_channels, *S) -> (B, out_channels, *output_shape(S))`` logits (``[logits]`` with
        ``side_outputs``); ``ValueError`` for a size the network does not take."""
        self.check_input(x)
        skips = []
        for level, enc in enumerate(self.encoders):
            x = enc(x)
            if level < len(self.pools):
                skips.append(x)
                x = self.pools[level](x)
        for up, dec in zip(self.ups, self.decoders):
            x = up(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:
                skip = center_crop(skip, x.shape[2:])
            x = dec(torch.cat([skip, x], dim=1))
        logits = self.head(x)
        return [logits] if side_outputs else logits


_PAPER = "Ronneberger, Fischer & Brox, MICCAI 2015"
register(ModelSpec(
    name="unet", builder=UNet, title="U-Net", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), padding="same"), reference=_PAPER,
))
register(ModelSpec(
    name="unet-valid", builder=UNet, title="U-Net (valid padding, overlap-tile)", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), padding="valid"), reference=_PAPER,
))
# thick-slice stacks (z voxels ~2x the xy pixel, as in the sample nuclei3d): the first
# pooling halves only y and x, making voxels isotropic before z is pooled. Widths 12..96 cost
# 44 kMAC per voxel, what the bundled 2D U-Net costs per pixel (46 kMAC)
register(ModelSpec(
    name="unet-3d", builder=UNet, title="3D U-Net", spatial_dims=3,
    defaults=dict(spatial_dims=3, features=(12, 24, 48, 96), padding="same",
                  strides=[(1, 2, 2), (2, 2, 2), (2, 2, 2)]),
    reference="Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, MICCAI 2016",
))
