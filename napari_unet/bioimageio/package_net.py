"""A package's own network (its TorchScript, or its state dict built by its architecture code) as a
member of the family, for the tiled predictor. Imports PyTorch: :mod:`napari_unet.bioimageio` imports
this module only when a package's own weights are loaded."""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import SegmentationNet
from ._common import PACKAGE_ARCHITECTURE


class PackageNet(SegmentationNet):
    """A package's network as a member of the family: ``forward`` takes ``(B, C, *spatial)``,
    runs the package's element-wise pre-processing, its network in its own axis order, and
    returns logits that the predictor's sigmoid / softmax turns into the package's probabilities.

    ``module``: the package's ``torch.nn.Module`` (or TorchScript module); ``plan``: how it runs
    (:class:`napari_unet.bioimageio.plan._Plan`)."""

    def __init__(self, module, plan):
        super().__init__()
        self.module = module
        self.spatial_dims = len(plan.spatial)
        self.in_channels, self.out_channels = int(plan.in_channels), int(plan.out_channels)
        self.config = {}
        self.size_divisor = tuple(int(s) for s in plan.steps)
        self.min_size = tuple(int(m) for m in plan.mins)
        self.architecture = PACKAGE_ARCHITECTURE
        self.activation = plan.activation
        self.in_axes = list(plan.in_axes)  # the package's axis order: "batch", "channel", "space:y"...
        self.out_axes = list(plan.out_axes)
        self.spatial_names = [f"space:{a}" for a in plan.spatial]
        self.pre = _preprocessing(plan.pre_ops, self.spatial_dims)
        for p in self.parameters():  # for prediction only (and TorchScript's copies warn about .grad otherwise)
            p.requires_grad_(False)

    def to(self, *args, **kwargs):
        """``Module.to`` without ``memory_format``: a package's weights keep their layout (a 3D model's
        weights may be 4D, which channels_last_3d refuses)."""
        kwargs.pop("memory_format", None)
        return super().to(*args, **kwargs) if args or kwargs else self

    def output_shape(self, input_shape):
        shape = tuple(int(n) for n in input_shape)
        for n, m, s in zip(shape, self.min_size, self.size_divisor):
            if n < m or (n - m) % s:
                raise ValueError(f"size {n} is not {m} + a multiple of {s}")
        return shape

    def valid_input_shape(self, min_shape):
        return tuple(m + max(0, -(-(int(n) - m) // s)) * s
                     for n, m, s in zip(min_shape, self.min_size, self.size_divisor))

    def forward(self, x, side_outputs: bool = False):
        x = self.pre(x.float())
        if "batch" in self.in_axes:
            y = self._run(x)
        else:  # a package without a batch axis sees one image at a time
            y = torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        if self.activation == "none":  # probabilities: logits whose sigmoid / softmax gives them back
            p = y.clamp(1e-7, 1 - 1e-7)
            y = torch.logit(p) if y.shape[1] == 1 else torch.log(p)
        return [y] if side_outputs else y

    def _run(self, x):
        """``(B, C, *spatial)`` through the package's network in its own axis order, and back."""
        names = ["batch", "channel"] + self.spatial_names
        for axis in ("channel", "batch"):  # axes the package does not have (then of size 1)
            if axis not in self.in_axes:
                x = x.select(names.index(axis), 0)
                names.remove(axis)
        y = self.module(x.permute(*[names.index(a) for a in self.in_axes]))
        if isinstance(y, (list, tuple)):
            y = y[0]
        names = list(self.out_axes)
        for axis in ("channel", "batch"):
            if axis not in names:
                y = y.unsqueeze(0)
                names.insert(0, axis)
        return y.permute(*[names.index(a) for a in ["batch", "channel"] + self.spatial_names]).float()


def _preprocessing(pre_ops, spatial_dims: int) -> nn.Sequential:
    """The plan's element-wise pre-processing steps (``("affine", scale, shift)``, ``("clip", low, high)``,
    ``("sigmoid",)``, ``("binarize", threshold)``, per channel) as modules run on each tile."""
    shape = (1, -1) + (1,) * spatial_dims
    ops = []
    for op in pre_ops:
        if op[0] == "affine":
            ops.append(_Affine(torch.tensor(op[1]).reshape(shape), torch.tensor(op[2]).reshape(shape)))
        elif op[0] == "clip":
            ops.append(_Clip(op[1], op[2]))
        elif op[0] == "sigmoid":
            ops.append(nn.Sigmoid())
        else:
            ops.append(_Binarize(torch.tensor(op[1]).reshape(shape)))
    return nn.Sequential(*ops)


class _Affine(nn.Module):
    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("shift", shift.float())

    def forward(self, x):
        return x * self.scale + self.shift


class _Clip(nn.Module):
    def __init__(self, low, high):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x):
        return x.clamp(self.low, self.high)


class _Binarize(nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.register_buffer("threshold", threshold.float())

    def forward(self, x):
        return (x > self.threshold).float()
