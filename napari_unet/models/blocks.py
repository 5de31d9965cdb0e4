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


class UpConv(nn.Module):
    """The U-Net's "up-convolution": a transposed convolution with kernel = stride = ``scale``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: int | Sequence[int] = 2):
        super().__init__()
        scale = as_tuple(scale, spatial_dims)
        self.up = conv_transpose_nd(spatial_dims)(in_channels, out_channels, scale, stride=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


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
