"""U-Net++ of Zhou, Rahman Siddiquee, Tajbakhsh & Liang (DLMIA 2018), dimension-generic.

"UNet++: A Nested U-Net Architecture for Medical Image Segmentation". The encoder-decoder
skip connections of the U-Net become nested, dense skip pathways. With ``L = len(features) - 1``
poolings the nodes are ``X[i, j]`` (``i`` = level 0..L, top to bottom; ``j`` = column):

* ``X[i, 0]`` is the encoder: a :class:`~.blocks.DoubleConv` on the max-pooled ``X[i-1, 0]``;
* ``X[i, j] = DoubleConv(concat(X[i, 0], ..., X[i, j-1], Up(X[i+1, j-1])))`` for ``j >= 1``,
  with ``features[i]`` channels, where ``Up`` is a transposed convolution (kernel = stride =
  the pooling factor; :class:`~.blocks.UpConv`) from ``features[i+1]`` to ``features[i]``
  channels, as in the authors' released code. The concatenation therefore has
  ``(j + 1) * features[i]`` channels.

``X[0, j]`` (``j = 1..L``) are all at full resolution; each has a 1x1 head (deep supervision).
``X[0, k]`` depends only on the nodes with ``i + j <= k``, which is what makes pruning possible:
the sub-network of depth ``k`` (encoder levels ``0..k`` and the nodes ``i + j <= k``) is a
complete U-Net++ of its own and can run alone ("fast mode").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import SegmentationNet
from .blocks import DoubleConv, UpConv, check_common, check_features, check_strides, head, max_pool_nd
from .registry import ModelSpec, register

MODES = ("final", "accurate")


class UNetPlusPlus(SegmentationNet):
    """U-Net++ (nested U-Net) with deep supervision, accurate and fast (pruned) modes.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels.
        out_channels: classes (2 = background/foreground; 3 = background/interior/boundary).
        features: channels per level, top to bottom; ``L = len(features) - 1`` poolings and
            ``L`` full-resolution heads. The paper uses ``(32, 64, 128, 256, 512)``, the widths of
            its U-Net; the default here is half the bundled U-Net's ``(16, ..., 256)``, because the
            nested nodes made those widths ~3x slower than the U-Net on the CPU (512 x 512), and
            this ~1x (0.57 M parameters).
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"``.
        strides: pooling factor per level, an int or one per axis (e.g. ``(1, 2, 2)`` for
            thick-slice 3D stacks); default 2 everywhere.
        upsample: ``"transpose"`` (the paper's transposed convolutions; files written before
            this option) or ``"resize"`` (nearest-neighbour + 1x1 convolution, the registry's
            default for new networks: no row/column stripes on flat regions; see
            :class:`~.blocks.UpConv`).
        mode: what ``forward(x)`` returns as its single output:

            * ``"final"`` (default): the head of ``X[0, L]`` (``X[0, k]`` when pruned).
            * ``"accurate"``: the mean of the logits of all heads ``X[0, 1..L]`` (``1..k`` when
              pruned), the paper's "accurate mode".

            ``"final"`` is the default because it is the one output defined for every
            checkpoint: without deep supervision only the head of ``X[0, L]`` is trained (the
            others keep their random initialisation, and averaging them in would spoil the
            result), and with it ``X[0, L]`` is the first side output, which the
            deep-supervision loss weights most.
        prune_depth: ``None`` (the full network) or ``k`` in ``1..L``: ``forward`` computes only
            the sub-network that ``X[0, k]`` needs (encoder levels ``0..k`` and the nodes with
            ``i + j <= k``) and returns ``X[0, k]``'s head (the paper's "fast mode"); with
            ``side_outputs=True`` only heads ``k..1``. Every module is still built, so the
            weights are those of the full network, and ``size_divisor`` stays the full
            network's. Pruning (like ``"accurate"``) needs a network trained with deep
            supervision: otherwise the heads of ``X[0, k < L]`` are untrained.

    ``forward(x, side_outputs=True)`` returns the ``L`` (or ``k``) heads' logits, each
    ``(B, out_channels, *spatial)`` at full resolution, ordered by column from the deepest:
    ``[head(X[0, L]), head(X[0, L-1]), ..., head(X[0, 1])]``. The first entry is the main
    output (the one ``mode="final"`` returns); the list is the raw heads whatever ``mode`` is.
    """

    deep_supervision = True
    prunable = True
    output_heads = ("heads",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (8, 16, 32, 64, 128), norm: str = "batch",
                 strides: Sequence[int | Sequence[int]] | None = None, mode: str = "final",
                 prune_depth: int | None = None, upsample: str = "transpose"):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features)
        depth = len(features) - 1
        self.strides = check_strides(strides, depth, spatial_dims)
        self.depth = depth
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.config = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                           features=features, norm=norm, strides=[list(s) for s in self.strides],
                           mode="final", prune_depth=None, upsample=upsample)
        self.set_mode(mode)
        self.set_prune_depth(prune_depth)

        pool = max_pool_nd(spatial_dims)
        self.pools = nn.ModuleList(pool(s, s) for s in self.strides)
        # nodes["x{i}_{j}"] is X[i, j]; ups["up{i}_{j}"] brings X[i+1, j-1] up for X[i, j]
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[f"x{i}_0"] = DoubleConv(spatial_dims, in_channels if i == 0 else features[i - 1],
                                               features[i], "same", norm)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[f"up{i}_{j}"] = UpConv(spatial_dims, features[i + 1], features[i], self.strides[i],
                                                upsample)
                self.nodes[f"x{i}_{j}"] = DoubleConv(spatial_dims, (j + 1) * features[i], features[i], "same", norm)
        # heads[j - 1] reads X[0, j]
        self.heads = nn.ModuleList(head(spatial_dims, features[0], out_channels) for _ in range(depth))
        self.size_divisor = tuple(math.prod(s[a] for s in self.strides) for a in range(spatial_dims))
        self.margin = 0

    # -- modes ------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """``"final"`` or ``"accurate"`` (see the class docstring); kept in ``config``."""
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
        self.mode = self.config["mode"] = mode

    def set_prune_depth(self, prune_depth: int | None) -> None:
        """Run only the sub-network of depth ``prune_depth`` (1..L), or the full one (``None``);
        kept in ``config``."""
        if prune_depth is not None:
            if isinstance(prune_depth, bool) or not isinstance(prune_depth, int) or not 1 <= prune_depth <= self.depth:
                raise ValueError(f"prune_depth must be None (full network) or an integer from 1 to {self.depth} "
                                 f"(the number of poolings), got {prune_depth!r}.")
        self.prune_depth = self.config["prune_depth"] = prune_depth

    def side_output_names(self) -> list[str]:
        """``["X0,L (depth L)", ..., "X0,1 (depth 1)"]`` (``k`` instead of ``L`` when pruned): the
        order of ``forward(x, side_outputs=True)``; depth ``j`` is the sub-network of ``j`` poolings."""
        depth = self.prune_depth or self.depth
        return [f"X0,{j} (depth {j})" for j in range(depth, 0, -1)]

    # -- forward ----------------------------------------------------------------------------
    def top_row(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """``[X[0, 1], ..., X[0, depth]]``: the full-resolution feature maps, computing only the
        nodes with ``i + j <= depth`` (``depth`` defaults to ``prune_depth`` or ``L``)."""
        depth = self._depth(depth)
        self.check_input(x)
        columns: list[list[torch.Tensor]] = []  # columns[i][j] = X[i, j]
        h = x
        for i in range(depth + 1):
            if i:
                h = self.pools[i - 1](h)
            h = self.nodes[f"x{i}_0"](h)
            columns.append([h])
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                up = self.ups[f"up{i}_{j}"](columns[i + 1][j - 1])
                columns[i].append(self.nodes[f"x{i}_{j}"](torch.cat(columns[i] + [up], dim=1)))
        return columns[0][1:]

    def _depth(self, depth: int | None) -> int:
        if depth is None:
            return self.prune_depth or self.depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.depth:
            raise ValueError(f"depth must be an integer from 1 to {self.depth}, got {depth!r}.")
        return depth

    def forward_pruned(self, x: torch.Tensor, depth: int, side_outputs: bool = False):
        """The sub-network of ``depth`` (1..L) alone, whatever ``prune_depth`` is: logits of
        ``X[0, depth]`` (``mode="final"``) or the mean of heads ``1..depth`` (``"accurate"``);
        with ``side_outputs=True`` the list ``[head(X[0, depth]), ..., head(X[0, 1])]``."""
        depth = self._depth(depth)
        row = self.top_row(x, depth)
        if side_outputs:
            return [self.heads[j](row[j]) for j in reversed(range(depth))]
        if self.mode == "accurate":
            return torch.stack([self.heads[j](row[j]) for j in range(depth)]).mean(0)
        return self.heads[depth - 1](row[depth - 1])

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``, or with
        ``side_outputs=True`` the list of every head's logits, deepest column first (see the
        class docstring). Spatial sizes must be multiples of ``size_divisor``."""
        return self.forward_pruned(x, self.prune_depth or self.depth, side_outputs)


def with_resize_upsampling(net: UNetPlusPlus) -> UNetPlusPlus:
    """A copy of a trained ``upsample="transpose"`` U-Net++ with stripe-free ``"resize"``
    up-convolutions (each initialised with its transposed convolution's averaged taps, see
    :func:`~.blocks.resize_from_transpose`); every other weight is copied. Train it before use."""
    from .blocks import resize_from_transpose

    if net.config.get("upsample", "transpose") != "transpose":
        raise ValueError("This U-Net++ already upsamples by resizing.")
    config = {**net.config, "upsample": "resize"}
    new = UNetPlusPlus(**config)
    new.architecture = getattr(net, "architecture", None)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("ups.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("ups.") for k in missing)
    for key, up in net.ups.items():
        resize_from_transpose(up, new.ups[key])
    return new.to(next(net.parameters()).device)


register(ModelSpec(
    name="unet++", builder=UNetPlusPlus, title="U-Net++ (nested U-Net)", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(8, 16, 32, 64, 128), mode="final", upsample="resize"),
    reference="Zhou, Rahman Siddiquee, Tajbakhsh & Liang, DLMIA 2018", legacy=dict(upsample="transpose"),
))
