"""Dimension-generic building blocks shared by every variant of the family.

Every block takes ``spatial_dims`` (2 or 3) so that the 2D and 3D networks share one code path.
Tensors are ``(B, C, *spatial)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

NORMS = ("batch", "instance", "group", "none")
PADDINGS = ("same", "valid")


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    return spatial_dims


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return (nn.Conv2d, nn.Conv3d)[_check_dims(spatial_dims) - 2]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    return (nn.ConvTranspose2d, nn.ConvTranspose3d)[_check_dims(spatial_dims) - 2]


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    return (nn.MaxPool2d, nn.MaxPool3d)[_check_dims(spatial_dims) - 2]


def norm_layer(spatial_dims: int, norm: str, channels: int) -> nn.Module:
    """A normalisation layer by name: ``batch`` (default; tile-independent at inference),
    ``instance``, ``group`` (8 groups or fewer) or ``none``."""
    if norm == "batch":
        return (nn.BatchNorm2d, nn.BatchNorm3d)[_check_dims(spatial_dims) - 2](channels)
    if norm == "instance":
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[_check_dims(spatial_dims) - 2](channels, affine=True)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r}: choose one of {', '.join(NORMS)}.")


def as_tuple(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"Expected {spatial_dims} values, got {value}.")
    return value


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation, ReLU. ``padding='valid'`` shrinks each side by k//2."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: str = "same", norm: str = "batch"):
        if padding not in PADDINGS:
            raise ValueError(f"Unknown padding {padding!r}: choose 'same' or 'valid'.")
        pad = kernel_size // 2 if padding == "same" else 0
        super().__init__(
            conv_nd(spatial_dims)(in_channels, out_channels, kernel_size, padding=pad, bias=norm == "none"),
            norm_layer(spatial_dims, norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The U-Net's unit: two 3x3 (3x3x3) convolutions, each followed by norm and ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, padding: str = "same",
                 norm: str = "batch"):
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, padding, norm),
            ConvNormAct(spatial_dims, out_channels, out_channels, 3, padding, norm),
        )


UPSAMPLING = ("transpose", "resize")


class UpConv(nn.Module):
    """The U-Net's "up-convolution", ``scale`` times larger.

    ``mode="transpose"``: the paper's transposed convolution with kernel = stride = ``scale``.
    Each output pixel's position within its ``scale`` block has its own weights, so an
    under-trained network paints a period-``scale`` pattern on flat regions (the row stripes of
    the first bundled U-Net++). ``mode="resize"``: nearest-neighbour upsampling, then a 1x1
    convolution (Odena, Dumoulin & Olah, Distill 2016): the same weights everywhere, so a flat
    input stays flat. It equals a transposed convolution whose taps are all the same, which is how
    :func:`resize_from_transpose` initialises it from a trained one.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: int | Sequence[int] = 2,
                 mode: str = "transpose"):
        super().__init__()
        if mode not in UPSAMPLING:
            raise ValueError(f"Unknown upsampling {mode!r}: choose one of {', '.join(UPSAMPLING)}.")
        scale = as_tuple(scale, spatial_dims)
        self.mode = mode
        if mode == "transpose":
            self.up = conv_transpose_nd(spatial_dims)(in_channels, out_channels, scale, stride=scale)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=tuple(float(f) for f in scale), mode="nearest"),
                                    conv_nd(spatial_dims)(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


@torch.no_grad()
def resize_from_transpose(transposed: UpConv, resized: UpConv) -> None:
    """Set a ``"resize"`` UpConv to the ``"transpose"`` one with its taps averaged: the closest
    stripe-free map (the weights then need training to recover what the taps did)."""
    weight = transposed.up.weight  # (in, out, *scale)
    conv = resized.up[1]
    conv.weight.copy_(weight.mean(dim=tuple(range(2, weight.ndim))).t().reshape(conv.weight.shape))
    conv.bias.copy_(transposed.up.bias)


def center_crop(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial centre of ``x`` (B, C, *spatial) to ``spatial_shape`` (the paper's skip crop)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], spatial_shape):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


def head(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution that maps features to class logits."""
    return conv_nd(spatial_dims)(in_channels, out_channels, 1)


# -- shared argument checks -------------------------------------------------------------------

def check_features(features: Sequence[int], min_levels: int = 2, max_levels: int | None = None) -> list[int]:
    """``features`` as a list of positive ints with ``min_levels .. max_levels`` entries."""
    try:
        features = [int(f) for f in features]
    except (TypeError, ValueError):
        raise ValueError(f"features must be a list of channel counts, got {features!r}.") from None
    if len(features) < min_levels or any(f < 1 for f in features):
        raise ValueError(f"features needs at least {min_levels} positive channel counts, one per level top to bottom "
                         f"(a U-Net needs at least two positive levels), got {features}.")
    if max_levels is not None and len(features) > max_levels:
        raise ValueError(f"features has {len(features)} entries but this encoder has at most {max_levels - 1} "
                         f"downsamplings: give at most {max_levels} channel counts.")
    return features


def check_common(spatial_dims: int, in_channels: int, out_channels: int) -> None:
    _check_dims(spatial_dims)
    if int(in_channels) < 1 or int(out_channels) < 1:
        raise ValueError("in_channels and out_channels must be at least 1.")


def check_strides(strides, n_poolings: int, spatial_dims: int) -> list[tuple[int, ...]]:
    """Pooling factor per level as one tuple per axis (default 2 everywhere); ``ValueError`` for
    a wrong count or a non-positive factor."""
    strides = [2] * n_poolings if strides is None else list(strides)
    if len(strides) != n_poolings:
        raise ValueError(f"strides needs one entry per pooling ({n_poolings}), got {len(strides)}.")
    tuples = [as_tuple(s, spatial_dims) for s in strides]
    if any(s < 1 for st in tuples for s in st):
        raise ValueError(f"strides must be positive, got {strides}.")
    return tuples
