"""What every network of the family shares: its constructor metadata and its shape rules."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SegmentationNet(nn.Module):
    """Base class of the family.

    Subclasses set ``spatial_dims``, ``in_channels``, ``out_channels``, ``config`` (the
    constructor arguments, JSON-serialisable, enough to rebuild the network) and implement
    :meth:`output_shape` and :meth:`forward`.

    ``forward(x)`` takes ``(B, in_channels, *spatial)`` and returns logits
    ``(B, out_channels, *spatial_out)``; ``forward(x, side_outputs=True)`` returns a list of
    logits, highest resolution first, for networks with deep supervision.
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

    def set_out_channels(self, out_channels: int) -> None:
        """Give the network a new, freshly initialised output head with ``out_channels`` classes
        (e.g. to fine-tune a binary model for the 3-class boundary target); the rest is kept."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its number of outputs.")

    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` for an input the network cannot take, saying what to change."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"Expected an input (B, {self.in_channels}, {', '.join('*' * self.spatial_dims)}) with "
                             f"{self.in_channels} channel(s) and {self.spatial_dims} spatial axes, got {tuple(x.shape)}.")
        spatial = tuple(x.shape[2:])
        if any(n % d for n, d in zip(spatial, self.size_divisor)):
            raise ValueError(f"Input size {spatial} is not a multiple of {self.size_divisor} per axis: this network "
                             f"pools {len(self.config['features']) - 1} times. Pad or crop to "
                             f"{self.valid_input_shape(spatial)} (net.valid_input_shape), or use fewer levels "
                             "(a shorter features list).")

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
