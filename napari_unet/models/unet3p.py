"""U-Net 3+ of Huang, Lin, Tong et al. (ICASSP 2020), dimension-generic.

"UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation". With ``N = len(features)``
levels (the paper: 5) the encoder is the U-Net's (a :class:`~.blocks.DoubleConv` per level,
max pooling between levels). Every decoder level ``i`` (``0..N-2``; the deepest encoder map
``E[N-1]`` counts as decoder level ``N-1``) fuses all scales ("full-scale skip connections"):

* encoder maps ``E[s]`` of the shallower levels ``s < i``, max-pooled down to level ``i``
  (kernel = stride = the product of the poolings between them);
* the encoder map ``E[i]`` of the same level;
* the deeper decoder maps ``D[s]``, ``s > i`` (``D[N-1] = E[N-1]``), upsampled to level ``i``
  (bilinear / trilinear, ``align_corners=False``).

Each of these ``N`` inputs passes its own 3x3 :class:`~.blocks.ConvNormAct` to ``cat_channels``
channels; the concatenation (``N * cat_channels`` channels; 5 x 64 = 320 in the paper) goes
through one more 3x3 ConvNormAct of ``N * cat_channels`` channels, which is ``D[i]``. The
shallower maps are pooled before their convolution, as in the paper. The deeper maps are
upsampled before their convolution with ``upsample_first=True`` (the paper's order), or
convolved at their own resolution and the ``cat_channels`` result upsampled with
``upsample_first=False`` (the default here). The weights have the same shapes either way; the
paper's order runs e.g. the 256 -> ``cat_channels`` convolution of ``E[4]`` on a map upsampled
16 x 16 times (and holds that 256-channel map at full resolution), which made the whole network
3-5x slower on the CPU (see :class:`UNet3Plus`).

Full-scale deep supervision: a 3x3 convolution head on every ``D[i]`` (``i = 0..N-1``), its
logits bilinearly upsampled to full resolution. The classification-guided module (CGM) predicts
from ``E[N-1]`` whether the input contains any object; see :class:`UNet3Plus`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationNet
from .blocks import ConvNormAct, DoubleConv, check_common, check_features, check_strides, conv_nd, max_pool_nd
from .registry import ModelSpec, register

#: Foreground probabilities of a sample the CGM calls empty are multiplied by this (not 0, so
#: the gated logits stay finite).
GATE_FLOOR = 1e-6


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def gate_logits(logits: torch.Tensor, gate: torch.Tensor, floor: float = GATE_FLOOR) -> torch.Tensor:
    """Logits whose foreground class probabilities are those of ``logits`` times ``gate``.

    ``logits`` ``(B, K, *spatial)``, ``gate`` ``(B,)`` in ``[0, 1]`` (clamped to ``>= floor`` so
    the result stays finite). Returns log-probabilities ``y`` (valid logits) such that

    * ``K >= 2`` (softmax, class 0 = background): ``softmax(y)[k] = gate * softmax(logits)[k]``
      for ``k >= 1`` and the background takes the rest, ``softmax(y)[0] = p_0 + (1 - gate)(1 - p_0)``;
    * ``K = 1`` (sigmoid foreground): ``sigmoid(y) = gate * sigmoid(logits)``.

    ``gate = 1`` leaves the probabilities unchanged; ``gate -> 0`` makes the background win
    everywhere. Differentiable in both arguments; computed in log space, so it is stable.
    """
    g = gate.to(logits.dtype).clamp(floor, 1.0).reshape((-1,) + (1,) * (logits.ndim - 1))
    log_g, log_not_g = torch.log(g), torch.log1p(-g)  # log1p(-1) = -inf is fine in logaddexp
    if logits.shape[1] == 1:
        log_q = log_g + F.logsigmoid(logits)  # log(g p)
        log_not_q = torch.logaddexp(log_not_g, log_g + F.logsigmoid(-logits))  # log(1 - g p) = log((1-g) + g(1-p))
        return log_q - log_not_q
    logp = torch.log_softmax(logits, dim=1)
    foreground = logp[:, 1:] + log_g
    background = torch.logaddexp(logp[:, :1], log_not_g + torch.logsumexp(logp[:, 1:], dim=1, keepdim=True))
    return torch.cat([background, foreground], dim=1)


def classification_target(target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float: 1 where a ``(B, *spatial)`` segmentation target has any foreground pixel
    (class > 0; ignored pixels, -1, do not count), else 0 - the CGM's "object present" label."""
    return (target > 0).flatten(1).any(dim=1).to(torch.float32)


def cgm_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the CGM's object-present probability, averaged over the batch.

    ``prob`` ``(B,)`` (from ``net(x, with_object_probability=True)``); ``target`` either the
    ``(B,)`` 0/1 labels or the ``(B, *spatial)`` segmentation target, turned into labels by
    :func:`classification_target`. Add it to the segmentation loss (the paper adds it with
    weight 1) to train the CGM; nothing else trains it.
    """
    if target.ndim > 1:
        target = classification_target(target)
    if prob.shape != target.shape:
        raise ValueError(f"cgm_loss needs one probability per sample: prob {tuple(prob.shape)}, "
                         f"labels {tuple(target.shape)}.")
    # written out rather than F.binary_cross_entropy, which refuses to run under CUDA autocast;
    # clamping keeps log() finite when the sigmoid saturates
    p = prob.float().clamp(1e-6, 1.0 - 1e-6)
    t = target.to(p.dtype)
    return -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p)).mean()


class _FullScaleNode(nn.Module):
    """Decoder level ``level`` of U-Net 3+: one ConvNormAct per source level, then the fusion."""

    def __init__(self, spatial_dims: int, level: int, features: Sequence[int], strides, cat_channels: int,
                 norm: str, upsample_first: bool):
        super().__init__()
        n = len(features)
        self.level = level
        self.upsample_first = upsample_first
        pool = max_pool_nd(spatial_dims)
        self.pools = nn.ModuleDict()
        for s in range(level):
            factor = tuple(math.prod(st[a] for st in strides[s:level]) for a in range(spatial_dims))
            self.pools[str(s)] = pool(factor, factor)
        # inputs[s] reads level s: E[s] for s <= level, D[s] (N * cat channels) above, E[N-1] last
        in_ch = [features[s] if s <= level or s == n - 1 else n * cat_channels for s in range(n)]
        self.inputs = nn.ModuleList(ConvNormAct(spatial_dims, c, cat_channels, 3, "same", norm) for c in in_ch)
        self.fuse = ConvNormAct(spatial_dims, n * cat_channels, n * cat_channels, 3, "same", norm)

    def forward(self, encoded: list[torch.Tensor], decoded: dict[int, torch.Tensor]) -> torch.Tensor:
        size = encoded[self.level].shape[2:]
        parts = []
        for s, conv in enumerate(self.inputs):
            if s < self.level:
                src = self.pools[str(s)](encoded[s])
            elif s == self.level:
                src = encoded[s]
            elif self.upsample_first:
                src = _upsample(decoded[s], size)
            else:
                parts.append(_upsample(conv(decoded[s]), size))
                continue
            parts.append(conv(src))
        return self.fuse(torch.cat(parts, dim=1))


class UNet3Plus(SegmentationNet):
    """U-Net 3+ with full-scale skips, full-scale deep supervision and the classification-guided module.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels.
        out_channels: classes (2 = background/foreground; 3 = background/interior/boundary).
        features: encoder channels per level, top to bottom (the paper: ``(64, 128, 256, 512,
            1024)``); ``len(features) - 1`` poolings.
        cat_channels: channels each scale is mapped to before the fusion (the paper: 64); the
            decoder maps have ``len(features) * cat_channels`` channels. The default 8 (40-channel
            decoder maps) keeps a 512 x 512 forward within ~1.5x the plain U-Net's time on the
            CPU; 16 took ~2.7x, and 8 in the paper's order ~3-5x.
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"``.
        strides: pooling factor per level, an int or one per axis; default 2 everywhere.
        upsample_first: ``True``: upsample the deeper maps, then convolve them (the paper);
            ``False`` (default): convolve them at their own resolution, then upsample (far
            cheaper at the top levels, with a slightly larger receptive field). The paper's
            configuration is ``features=(64, 128, 256, 512, 1024), cat_channels=64,
            upsample_first=True``.
        classification_guided: gate the segmentation by the CGM (see below). Off by default:
            the CGM learns only from :func:`cgm_loss`, which the caller must add, and on
            microscopy tiles it decides per tile. The module is always built, so a checkpoint
            loads either way.

    ``forward(x, side_outputs=True)`` returns ``N`` logits ``(B, out_channels, *spatial)``, all at
    full resolution, highest-resolution level first: ``[head(D[0]) (main), up(head(D[1])), ...,
    up(head(E[N-1]))]``.

    **Classification-guided module.** ``Dropout(0.5) -> 1x1 conv to 2 channels -> global max
    pool`` on ``E[N-1]``; the object-present probability is ``softmax`` over the two channels'
    second entry (= ``sigmoid(z1 - z0)``, so "present" <=> the paper's argmax picks channel 1).
    ``forward(..., with_object_probability=True)`` returns it ``(B,)`` beside the output,
    attached to the graph for :func:`cgm_loss` (the class declares ``has_classifier``, so the
    predictor asks for it; the network keeps no copy). With ``classification_guided`` on, in
    eval mode, every output of a sample whose probability is below 0.5 is replaced by
    :func:`gate_logits` with gate 0 (its foreground probabilities multiplied by ``GATE_FLOOR``:
    the background wins everywhere); samples judged to contain objects keep their logits
    unchanged. The gate is the paper's hard argmax, so no gradient passes through it and the CGM
    learns only from :func:`cgm_loss` (as in the paper). Unlike the paper, the gate is not
    applied in training mode: there it could only hide patches from the segmentation loss (all
    of a patch's objects, when the young CGM errs; every empty patch, once it is right, so the
    segmentation would never learn to stay quiet on background by itself). The segmentation
    learns from every patch, the CGM from its loss, and the gate acts at inference (including
    the trainer's validation).
    """

    deep_supervision = True
    has_classifier = True
    output_heads = ("heads",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), cat_channels: int = 8, norm: str = "batch",
                 strides: Sequence[int | Sequence[int]] | None = None, classification_guided: bool = False,
                 upsample_first: bool = False):
        super().__init__()
        check_common(spatial_dims, in_channels, out_channels)
        features = check_features(features)
        if isinstance(cat_channels, bool) or not isinstance(cat_channels, int) or cat_channels < 1:
            raise ValueError(f"cat_channels must be a positive integer (the paper uses 64), got {cat_channels!r}.")
        if not isinstance(upsample_first, bool):
            raise ValueError(f"upsample_first must be True or False, got {upsample_first!r}.")
        levels = len(features)
        self.strides = check_strides(strides, levels - 1, spatial_dims)
        self.levels = levels
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.config = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                           features=features, cat_channels=cat_channels, norm=norm,
                           strides=[list(s) for s in self.strides], upsample_first=upsample_first,
                           classification_guided=False)
        self.set_classification_guided(classification_guided)

        pool = max_pool_nd(spatial_dims)
        self.pools = nn.ModuleList(pool(s, s) for s in self.strides)
        self.encoders = nn.ModuleList(
            DoubleConv(spatial_dims, in_channels if i == 0 else features[i - 1], f, "same", norm)
            for i, f in enumerate(features))
        # decoders[i] makes D[i], i = 0..N-2
        self.decoders = nn.ModuleList(_FullScaleNode(spatial_dims, i, features, self.strides, cat_channels, norm,
                                                     upsample_first) for i in range(levels - 1))
        self.heads = self._make_heads(out_channels)
        self.cgm = nn.Sequential(nn.Dropout(0.5), conv_nd(spatial_dims)(features[-1], 2, 1),
                                 (nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)[spatial_dims - 2](1))
        self.size_divisor = tuple(math.prod(s[a] for s in self.strides) for a in range(spatial_dims))
        self.margin = 0

    def _make_heads(self, out_channels: int) -> nn.ModuleList:
        conv = conv_nd(self.spatial_dims)
        decoder_ch = self.levels * self.config["cat_channels"]
        in_ch = [decoder_ch] * (self.levels - 1) + [self.config["features"][-1]]
        return nn.ModuleList(conv(c, out_channels, 3, padding=1) for c in in_ch)

    def side_output_names(self) -> list[str]:
        """``["D0 (level 0)", "D1 (level 1)", ..., "E{N-1} (level N-1)"]``: the order of
        ``forward(x, side_outputs=True)``; level ``i`` is the decoder map at 1/2^i resolution (the
        deepest is the encoder's bottom map)."""
        last = self.levels - 1
        return [f"D{i} (level {i})" for i in range(last)] + [f"E{last} (level {last})"]

    def set_classification_guided(self, on: bool) -> None:
        """Switch the CGM's gating of the outputs on or off (kept in ``config``)."""
        if not isinstance(on, bool):
            raise ValueError(f"classification_guided must be True or False, got {on!r}.")
        self.classification_guided = self.config["classification_guided"] = on

    # -- forward ----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder maps ``[E[0], ..., E[N-1]]``, finest first."""
        self.check_input(x)
        encoded, h = [], x
        for i, enc in enumerate(self.encoders):
            if i:
                h = self.pools[i - 1](h)
            h = enc(h)
            encoded.append(h)
        return encoded

    def _object_probability(self, deepest: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.cgm(deepest).flatten(1), dim=1)[:, 1]

    def object_probability(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` probability that each input sample contains an object (runs only the encoder and
        the CGM; in eval mode, so that the CGM's dropout is off, it is deterministic)."""
        return self._object_probability(self.encode(x)[-1])

    def classification_loss(self, probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The paper's binary cross-entropy of the object-present probability (:func:`cgm_loss`)."""
        return cgm_loss(probability, target)

    def forward(self, x: torch.Tensor, side_outputs: bool = False, with_object_probability: bool = False):
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``, or the list of
        every level's logits at full resolution with ``side_outputs=True`` (see the class
        docstring). ``with_object_probability=True`` returns ``(output, probability)`` where the
        ``(B,)`` probability keeps its gradient (for :func:`cgm_loss`)."""
        encoded = self.encode(x)
        decoded = {self.levels - 1: encoded[-1]}
        for i in reversed(range(self.levels - 1)):
            decoded[i] = self.decoders[i](encoded, decoded)
        prob = self._object_probability(encoded[-1])
        size = x.shape[2:]
        n_out = self.levels if side_outputs else 1
        outputs = [_upsample(self.heads[i](decoded[i]), size) for i in range(n_out)]
        if self.classification_guided and not self.training:
            present = (prob >= 0.5).reshape((-1,) + (1,) * (x.ndim - 1))
            empty = torch.zeros_like(prob)
            outputs = [torch.where(present, out, gate_logits(out, empty)) for out in outputs]
        result = outputs if side_outputs else outputs[0]
        return (result, prob) if with_object_probability else result


register(ModelSpec(
    name="unet3+", builder=UNet3Plus, title="U-Net 3+ (full-scale skips)", spatial_dims=2,
    defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), cat_channels=8, upsample_first=False,
                  classification_guided=False),
    reference="Huang, Lin, Tong et al., ICASSP 2020",
))
