"""What every network of the family shares: its constructor metadata, its shape rules, its
declared capabilities and the replacement of its output heads."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SegmentationNet(nn.Module):
    """Base class of the family.

    Subclasses set ``spatial_dims``, ``in_channels``, ``out_channels``, ``config`` (the
    constructor arguments, JSON-serialisable, enough to rebuild the network) and implement
    :meth:`output_shape` and :meth:`forward`; ``forward`` starts with :meth:`check_input`.

    ``forward(x)`` takes ``(B, in_channels, *spatial)`` and returns logits
    ``(B, out_channels, *spatial_out)``; ``forward(x, side_outputs=True)`` returns a list of
    logits, highest resolution first, for networks with deep supervision.

    What a variant can do is declared on its class (read by the engine, also from the registry
    without building weights): :attr:`deep_supervision`, :attr:`prunable`, :attr:`has_classifier`,
    and :attr:`output_heads` for :meth:`set_out_channels`.
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    config: dict
    #: Spatial sizes must be multiples of this (per axis) for "same" padding.
    size_divisor: tuple[int, ...]
    #: Pixels lost on each side of the input ("valid" padding); 0 for "same".
    margin: int = 0
    #: The registry name the network was built under (set by ``build_model``).
    architecture: str = ""

    # -- capabilities, declared by the variant --------------------------------------------
    #: ``forward(x, side_outputs=True)`` returns more than one output (one per depth), named by
    #: :meth:`side_output_names`; a deep-supervision loss can train them all.
    deep_supervision: bool = False
    #: ``set_prune_depth(k)`` makes ``forward`` run a shallower sub-network (U-Net++).
    prunable: bool = False
    #: A classification head: ``forward(x, ..., with_object_probability=True)`` returns
    #: ``(output, probability)`` with the ``(B,)`` probability that each sample holds an object.
    has_classifier: bool = False
    #: Dotted module names of the output head(s) that :meth:`set_out_channels` replaces: a
    #: convolution, an ``nn.ModuleList`` of them, or a sub-network (which changes its own).
    #: Empty: the network cannot change its number of outputs.
    output_heads: tuple[str, ...] = ()

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape; ``ValueError`` if it does not fit.

        The default serves "same"-padding networks: the output has the input's shape, which
        must be a multiple of ``size_divisor`` per axis."""
        shape = tuple(int(n) for n in input_shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(f"Expected {self.spatial_dims} spatial sizes, got {shape}.")
        for n, d in zip(shape, self.size_divisor):
            if n < 1 or n % d:
                raise ValueError(f"size {n} is not a positive multiple of {d}")
        return shape

    def is_valid_input_shape(self, input_shape: Sequence[int]) -> bool:
        try:
            out = self.output_shape(input_shape)
        except ValueError:
            return False
        return all(o > 0 for o in out)

    def valid_input_shape(self, min_shape: Sequence[int]) -> tuple[int, ...]:
        """The smallest accepted input shape whose size is at least ``min_shape`` per axis
        (default: rounded up to ``size_divisor``, for "same"-padding networks)."""
        return tuple(-(-max(int(n), 1) // d) * d for n, d in zip(min_shape, self.size_divisor))

    def side_output_names(self) -> list[str]:
        """One short name per entry of ``forward(x, side_outputs=True)``, in the same order (the main
        output first). Networks with deep supervision override this to name their depths."""
        return ["output"]

    # -- output heads -----------------------------------------------------------------------
    def head_channels(self, out_channels: int) -> int:
        """Channels the output heads give for ``out_channels`` classes (the same, unless the
        network derives its logits from fewer maps)."""
        return out_channels

    def classification_loss(self, probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the classification head (networks that declare ``has_classifier``): its
        ``(B,)`` object-present ``probability`` against the patches' ``target`` (class indices)."""
        raise NotImplementedError(f"{type(self).__name__} has no classification head.")

    def set_out_channels(self, out_channels: int) -> None:
        """Give the network new, freshly initialised output heads (:attr:`output_heads`) for
        ``out_channels`` classes (e.g. to fine-tune a binary model for the 3-class boundary
        target); the rest is kept, and ``config`` describes the changed network."""
        if not self.output_heads:
            raise NotImplementedError(f"{type(self).__name__} cannot change its number of outputs.")
        if out_channels < 1:
            raise ValueError("out_channels must be at least 1.")
        out_channels = int(out_channels)
        if out_channels == self.out_channels:
            return
        channels = self.head_channels(out_channels)
        if channels != self.head_channels(self.out_channels):
            self.replace_heads(channels)
        self.out_channels = self.config["out_channels"] = out_channels

    def replace_heads(self, channels: int) -> None:
        """Replace every module of :attr:`output_heads` by a fresh one giving ``channels`` maps."""
        for name in self.output_heads:
            parent, _, attr = name.rpartition(".")
            owner = self.get_submodule(parent) if parent else self
            setattr(owner, attr, fresh_head(getattr(owner, attr), channels))

    # -- input ------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` for an input the network cannot take, saying what to change."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            what, axes = ("input", "H, W") if self.spatial_dims == 2 else ("a volume batch", "D, H, W")
            raise ValueError(f"Expected {what} (B, {self.in_channels}, {axes}) with {self.in_channels} channel(s) "
                             f"and {self.spatial_dims} spatial axes, got {tuple(x.shape)}.")
        spatial = tuple(int(n) for n in x.shape[2:])
        if self.is_valid_input_shape(spatial):
            return
        fix = f"Pad or crop to {self.valid_input_shape(spatial)} (net.valid_input_shape)"
        if self.margin:
            raise ValueError(f"Input size {spatial} does not fit this valid-padding network: every convolution "
                             "loses a pixel per side and each pooling needs a size its factor divides. "
                             f"{fix}; the output is {2 * self.margin} pixels smaller per axis (net.output_shape).")
        if any(n % d for n, d in zip(spatial, self.size_divisor)):
            levels = len(self.config.get("features", ())) - 1
            pools = f"this network pools {levels} times. " if levels > 0 else ""
            raise ValueError(f"Input size {spatial} is not a multiple of {self.size_divisor} per axis: {pools}{fix}"
                             + (", or use fewer levels (a shorter features list)." if levels > 0 else "."))
        raise ValueError(f"Input size {spatial} does not fit this network. {fix}.")

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def fresh_head(old: nn.Module, channels: int) -> nn.Module:
    """A newly initialised copy of an output head with ``channels`` output maps, on ``old``'s
    device: a convolution of the same kind, size and input, each of an ``nn.ModuleList`` in
    turn, or a sub-network's own :meth:`SegmentationNet.set_out_channels`."""
    if isinstance(old, SegmentationNet):
        old.set_out_channels(channels)
        return old
    if isinstance(old, nn.ModuleList):
        return nn.ModuleList(fresh_head(h, channels) for h in old)
    if not isinstance(old, nn.modules.conv._ConvNd) or old.transposed:
        raise TypeError(f"Cannot replace an output head of type {type(old).__name__}: the network must override "
                        "replace_heads.")
    new = type(old)(old.in_channels, channels, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
                    padding_mode=old.padding_mode)
    return new.to(old.weight.device)
