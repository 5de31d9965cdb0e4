"""Dimension-generic blocks of the encoder variants, and the U-Net decoder they share.

Every block takes ``spatial_dims`` (2 or 3) like :mod:`.blocks`; tensors are ``(B, C, *spatial)``.

Blocks:

* :class:`ResidualUnit` -- the pre-activation residual unit with identity mapping (He et al.,
  ECCV 2016; used by the Residual U-Net of Zhang, Liu & Wang, GRSL 2018):
  ``BN-ReLU-conv-BN-ReLU-conv`` plus the identity, or a 1x1 projection when the shape changes.
* :class:`DepthwiseSeparableConv` -- a depthwise kxk convolution then a pointwise 1x1 one
  (MobileNet, Howard et al. 2017), each followed by norm and activation.
* :class:`InvertedResidual` -- MobileNetV2's bottleneck (Sandler et al., CVPR 2018): 1x1
  expansion, depthwise 3x3, *linear* 1x1 projection; ReLU6; residual at stride 1 and same width.
* :class:`SqueezeExcitation` -- channel attention (Hu et al., CVPR 2018).
* :class:`MBConv` -- EfficientNet's block (Tan & Le, ICML 2019): 1x1 expansion, depthwise kxk,
  squeeze-and-excitation, linear 1x1 projection; SiLU; residual with optional drop-connect.

:class:`UNetDecoder` decodes a list of encoder feature maps (highest resolution first) the
U-Net way: upsample, concatenate the skip, one decoder block per level; the block is a
parameter, so the variants share one decoder.

Convolutions that feed a batch norm sit right before it inside one ``nn.Sequential`` so the
predictor can fold the pair into one convolution (``fuse_batchnorm``); the batch norm on the
input of a pre-activation unit cannot be folded (the identity path needs the input unnormalised).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationNet
from .blocks import (ConvNormAct, UpConv, _check_dims, as_tuple, check_common, check_features,  # noqa: F401
                     conv_nd, norm_layer)

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}
UPSAMPLING = ("transpose", "nearest", "linear")


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name](inplace=True)
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}.") from None


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
          groups: int = 1, norm: str = "batch", bias: bool | None = None) -> nn.Module:
    """A "same"-padded convolution; without bias when a norm follows it (the norm's shift replaces it)."""
    return conv_nd(spatial_dims)(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                 groups=groups, bias=(norm == "none") if bias is None else bias)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10 % below ``value``.

    The rounding of MobileNetV2's width multiplier and of EfficientNet's ``round_filters``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def round_filters(channels: int, width_coefficient: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: ``channels * width_coefficient`` rounded by :func:`make_divisible`."""
    return make_divisible(channels * width_coefficient, divisor)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """EfficientNet's depth scaling: ``ceil(repeats * depth_coefficient)``."""
    return int(math.ceil(depth_coefficient * repeats))


# -- residual unit --------------------------------------------------------------------------------

class ResidualUnit(nn.Module):
    """Pre-activation residual unit with identity mapping: ``x + F(x)``.

    ``F`` is ``BN-ReLU-conv3(stride)-BN-ReLU-conv3``; the shortcut is the identity when the
    shape is kept, else a 1x1 convolution (with ``stride``) and norm. With
    ``preactivate=False`` the leading ``BN-ReLU`` is left out: the first unit of the Residual
    U-Net sees the raw image (Zhang et al. 2018, Fig. 2).

    ``(B, in_channels, *S) -> (B, out_channels, *S / stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int | Sequence[int] = 1,
                 norm: str = "batch", preactivate: bool = True):
        super().__init__()
        stride = as_tuple(stride, spatial_dims)
        conv = conv_nd(spatial_dims)
        bias = norm == "none"
        # the pre-activation ReLU may work in place only on the norm's fresh output: without a
        # norm it would overwrite the input that the identity path adds back
        layers = [norm_layer(spatial_dims, norm, in_channels), nn.ReLU(inplace=norm != "none")] if preactivate else []
        layers += [
            conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
            norm_layer(spatial_dims, norm, out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=bias),
        ]
        self.body = nn.Sequential(*layers)
        if in_channels == out_channels and all(s == 1 for s in stride):
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=bias),
                                          norm_layer(spatial_dims, norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


# -- mobile blocks --------------------------------------------------------------------------------

class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise kxk convolution (with ``stride``) + norm + act, then pointwise 1x1 + norm + act.

    ``(B, in_channels, *S) -> (B, out_channels, *S / stride)``; per pixel it costs
    ``in * (k^d + out)`` multiplications instead of a full convolution's ``in * k^d * out``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, norm: str = "batch", act: str = "relu"):
        super().__init__(
            _conv(spatial_dims, in_channels, in_channels, kernel_size, stride, groups=in_channels, norm=norm),
            norm_layer(spatial_dims, norm, in_channels),
            activation(act),
            _conv(spatial_dims, in_channels, out_channels, 1, norm=norm),
            norm_layer(spatial_dims, norm, out_channels),
            activation(act),
        )


class SeparableDoubleConv(nn.Sequential):
    """The U-Net's double convolution made of two :class:`DepthwiseSeparableConv` (3x3)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "batch",
                 act: str = "relu"):
        super().__init__(
            DepthwiseSeparableConv(spatial_dims, in_channels, out_channels, 3, norm=norm, act=act),
            DepthwiseSeparableConv(spatial_dims, out_channels, out_channels, 3, norm=norm, act=act),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (linear bottleneck).

    ``1x1 expand (x expand_ratio) - BN - ReLU6 - depthwise kxk (stride) - BN - ReLU6 - 1x1
    project - BN`` (no activation after the projection: the bottleneck is linear); the input is
    added when ``stride == 1`` and ``in_channels == out_channels``. ``expand_ratio == 1`` drops
    the expansion (MobileNetV2's first bottleneck).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 expand_ratio: int = 6, kernel_size: int = 3, norm: str = "batch", act: str = "relu6"):
        super().__init__()
        if expand_ratio < 1:
            raise ValueError(f"expand_ratio must be at least 1, got {expand_ratio}.")
        hidden = in_channels * expand_ratio
        layers = []
        if expand_ratio != 1:
            layers += [_conv(spatial_dims, in_channels, hidden, 1, norm=norm), norm_layer(spatial_dims, norm, hidden),
                       activation(act)]
        layers += [
            _conv(spatial_dims, hidden, hidden, kernel_size, stride, groups=hidden, norm=norm),
            norm_layer(spatial_dims, norm, hidden),
            activation(act),
            _conv(spatial_dims, hidden, out_channels, 1, norm=norm),
            norm_layer(spatial_dims, norm, out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# -- EfficientNet blocks --------------------------------------------------------------------------

class SqueezeExcitation(nn.Module):
    """Channel attention: global average -> 1x1 (``squeezed_channels``) -> act -> 1x1 -> sigmoid,
    which scales each channel of the input. ``(B, C, *S) -> (B, C, *S)``.

    The global average makes every output pixel depend on the whole input (tile), so tiled
    prediction is no longer exactly tile-independent."""

    def __init__(self, spatial_dims: int, channels: int, squeezed_channels: int, act: str = "silu"):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.reduce = conv(channels, squeezed_channels, 1)
        self.act = activation(act)
        self.expand = conv(squeezed_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``rate`` (training
    only) and scale the kept ones by ``1 / (1 - rate)``."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """EfficientNet's mobile inverted bottleneck with squeeze-and-excitation.

    ``1x1 expand - BN - SiLU - depthwise kxk (stride) - BN - SiLU - SE - 1x1 project - BN``; the
    input is added (after drop-connect of the branch while training) at stride 1 and same width.
    The SE squeezes to ``max(1, int(in_channels * se_ratio))`` channels (of the block's input,
    as in EfficientNet); ``se_ratio=0`` leaves SE out.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, expand_ratio: int = 6, se_ratio: float = 0.25, drop_connect_rate: float = 0.0,
                 norm: str = "batch", act: str = "silu"):
        super().__init__()
        if expand_ratio < 1:
            raise ValueError(f"expand_ratio must be at least 1, got {expand_ratio}.")
        if not 0.0 <= se_ratio <= 1.0:
            raise ValueError(f"se_ratio must be in [0, 1], got {se_ratio}.")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1), got {drop_connect_rate}.")
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand = nn.Sequential(_conv(spatial_dims, in_channels, hidden, 1, norm=norm),
                                        norm_layer(spatial_dims, norm, hidden), activation(act))
        else:
            self.expand = nn.Identity()
        self.depthwise = nn.Sequential(
            _conv(spatial_dims, hidden, hidden, kernel_size, stride, groups=hidden, norm=norm),
            norm_layer(spatial_dims, norm, hidden), activation(act))
        squeezed = max(1, int(in_channels * se_ratio))
        self.se = SqueezeExcitation(spatial_dims, hidden, squeezed, act) if se_ratio > 0 else nn.Identity()
        self.project = nn.Sequential(_conv(spatial_dims, hidden, out_channels, 1, norm=norm),
                                     norm_layer(spatial_dims, norm, out_channels))
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = float(drop_connect_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            out = x + drop_connect(out, self.drop_connect_rate, self.training)
        return out


# -- the shared decoder ---------------------------------------------------------------------------

class UNetDecoder(nn.Module):
    """The U-Net's expanding path over any encoder.

    Args:
        spatial_dims: 2 or 3.
        encoder_channels: channels of the encoder's feature maps, highest resolution first:
            the skips of levels ``0 .. L-1`` and the bottom (level ``L``) last.
        decoder_channels: output channels of the decoder block of levels ``0 .. L-1``.
        block: ``block(in_channels, out_channels) -> nn.Module`` that keeps the spatial size
            (e.g. ``DoubleConv``, :class:`ResidualUnit`, :class:`SeparableDoubleConv`).
        upsample: ``"transpose"`` (the U-Net's up-convolution to the level's decoder width),
            ``"nearest"`` or ``"linear"`` (interpolation; keeps the channels of the level below).
        scales: upsampling factor from level ``l + 1`` to level ``l`` (an int or one per axis),
            one per level; default 2.

    ``forward(features)`` takes the ``L + 1`` maps and returns ``(B, decoder_channels[0], *S0)``
    where ``S0`` is the spatial size of ``features[0]``.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 block: Callable[[int, int], nn.Module], upsample: str = "transpose",
                 scales: Sequence[int | Sequence[int]] | None = None):
        super().__init__()
        _check_dims(spatial_dims)
        encoder_channels, decoder_channels = list(encoder_channels), list(decoder_channels)
        levels = len(encoder_channels) - 1
        if levels < 1 or len(decoder_channels) != levels:
            raise ValueError(f"The decoder needs L + 1 encoder widths and L decoder widths (L >= 1), got "
                             f"{encoder_channels} and {decoder_channels}.")
        if upsample not in UPSAMPLING:
            raise ValueError(f"Unknown upsample {upsample!r}: choose one of {', '.join(UPSAMPLING)}.")
        scales = [2] * levels if scales is None else list(scales)
        if len(scales) != levels:
            raise ValueError(f"scales needs one entry per level ({levels}), got {len(scales)}.")
        self.spatial_dims, self.upsample = spatial_dims, upsample
        self.scales = [as_tuple(s, spatial_dims) for s in scales]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        below = encoder_channels[-1]
        for level in reversed(range(levels)):
            if upsample == "transpose":
                self.ups.append(UpConv(spatial_dims, below, decoder_channels[level], self.scales[level]))
                up_channels = decoder_channels[level]
            else:
                self.ups.append(nn.Identity())
                up_channels = below
            self.blocks.append(block(encoder_channels[level] + up_channels, decoder_channels[level]))
            below = decoder_channels[level]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(features[:-1])):
            if self.upsample == "transpose":
                x = up(x)
            else:
                mode = "nearest" if self.upsample == "nearest" else ("bilinear", "trilinear")[self.spatial_dims - 2]
                x = F.interpolate(x, size=skip.shape[2:], mode=mode,
                                  **({} if mode == "nearest" else {"align_corners": False}))
            x = block(torch.cat([skip, x], dim=1))
        return x


# -- a U-Net over a classification backbone -------------------------------------------------------

class BackboneUNet(SegmentationNet):
    """A U-Net whose encoder is a mobile classification backbone that starts with a stride-2 stem
    (MobileNetV2, EfficientNet); subclasses build the parts, this class wires them.

    A backbone's first feature map is at half resolution, so a U-Net decoder over it alone would
    end at half resolution. A light full-resolution branch, ``skip`` (one 3x3 conv-norm-ReLU of
    the image to ``features[0]`` channels), gives the decoder its level-0 skip so that the output
    has the input's size and fine detail, without running the backbone at full resolution.

    Parts set by the subclass:
        skip: ``(B, in, *S) -> (B, features[0], *S)``.
        levels: one module per downsampling level ``1 .. L``; level 1 starts with the stem, each
            later one with its stride-2 block; their outputs are the skips of levels ``1 .. L-1``.
        bottom: the backbone's final 1x1 conv (to ``features[L]`` channels) on the level-L map.
        decoder: a :class:`UNetDecoder` from level L up to level 0.
        head: 1x1 convolution ``features[0] -> out_channels``.

    Arguments every subclass takes:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels (1 for grey, 3 for RGB).
        out_channels: classes (2 = background/foreground; 3 = background/interior/boundary).
        features: decoder widths per level, full resolution first: ``features[0]`` is the
            full-resolution branch and last decoder level, ``features[l]`` the decoder at
            ``1 / 2**l``, and ``features[-1]`` the backbone's final 1x1 convolution at the bottom.
            ``len(features) - 1`` downsamplings, 1 to 5.
    """

    output_heads = ("head",)

    def _build_parts(self, spatial_dims: int, features: Sequence[int], norm: str, backbone: Callable,
                     bottom_activation: str, decoder_block: type) -> None:
        """Build the parts around the levels ``backbone()`` returns with their widths: the
        full-resolution skip, the bottom 1x1 conv, a decoder of ``decoder_block`` and the head."""
        from functools import partial

        from .blocks import head, norm_layer

        self.skip = full_resolution_skip(spatial_dims, self.in_channels, features[0], norm)
        self.levels, widths = backbone()
        self.bottom = nn.Sequential(_conv(spatial_dims, widths[-1], features[-1], 1, norm=norm),
                                    norm_layer(spatial_dims, norm, features[-1]), activation(bottom_activation))
        self.decoder = UNetDecoder(spatial_dims, [features[0], *widths[:-1], features[-1]], features[:-1],
                                   partial(decoder_block, spatial_dims, norm=norm))
        self.head = head(spatial_dims, features[0], self.out_channels)
        self.size_divisor = (2 ** (len(features) - 1),) * spatial_dims
        self.margin = 0

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        """``(B, in_channels, *S) -> (B, out_channels, *S)`` logits (``[logits]`` with ``side_outputs``)."""
        self.check_input(x)
        features = [self.skip(x)]
        for level in self.levels:
            x = level(x)
            features.append(x)
        features[-1] = self.bottom(features[-1])
        logits = self.head(self.decoder(features))
        return [logits] if side_outputs else logits


def full_resolution_skip(spatial_dims: int, in_channels: int, channels: int, norm: str) -> nn.Module:
    """The light full-resolution branch of a :class:`BackboneUNet` (3x3 conv, norm, ReLU)."""
    return ConvNormAct(spatial_dims, in_channels, channels, 3, norm=norm)

