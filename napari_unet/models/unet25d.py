"""2.5D U-Nets: volumetric networks built from a shared 2D U-Net (no 3D convolution).

Two ways to give a 2D U-Net a third dimension, both networks with ``spatial_dims = 3`` from the
engine's point of view (input ``(B, C, D, H, W)``, logits ``(B, K, D, H, W)``), so the tiled 3D
predictor and the 3D trainer use them like the 3D U-Net:

* :class:`UNet25DStack` (``"unet-2.5d-stack"``), the common slice-stack 2.5D U-Net: each slice is
  segmented by a 2D U-Net that sees the ``k`` neighbouring slices as input channels.
* :class:`UNet25DProjection` (``"unet-2.5d"``), the projection-based 2.5D U-Net of Angermann,
  Haltmeier, Steiger, Pereverzyev Jr & Gizewski ("Projection-Based 2.5D U-net Architecture for
  Fast Volumetric Segmentation", arXiv:1902.00347, 2019), trained on random subsets of
  directions as in Angermann & Haltmeier ("Random 2.5D U-net for Fully 3D Segmentation",
  MLMIR / MICCAI workshops 2019, arXiv:1910.10398): maximum-intensity projections along several
  directions, a shared 2D U-Net on each, a learnable filtration, linear back-projection into the
  volume and a small learnable fine-tuning operator.

Both hold 2D convolutions inside a 3D network, so they translate the predictor's 3D
channels-last request (``torch.channels_last_3d``, for 5D weights) into the 2D layout their 4D
weights take (see :meth:`_Volumetric2D.to`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationNet
from .registry import ModelSpec, register
from .unet import UNet


def _check_volumetric(spatial_dims: int, in_channels: int, out_channels: int, name: str) -> None:
    if spatial_dims != 3:
        raise ValueError(f"{name} segments volumes (B, C, D, H, W): spatial_dims must be 3, got {spatial_dims!r}; "
                         "use 'unet' for 2D images.")
    if in_channels < 1 or out_channels < 1:
        raise ValueError("in_channels and out_channels must be at least 1.")


class _Volumetric2D(SegmentationNet):
    """A 3D network whose weights are those of 2D layers (its output head is that of the 2D U-Net
    inside)."""

    output_heads = ("unet",)

    def to(self, *args, **kwargs):
        """``Module.to`` that maps ``memory_format=torch.channels_last_3d`` (which only 5D tensors
        take, and which the predictor asks of every 3D network) to ``torch.channels_last`` for the
        4D weights of the 2D convolutions inside."""
        if kwargs.get("memory_format") is torch.channels_last_3d:
            kwargs = dict(kwargs, memory_format=torch.channels_last)
        return super().to(*args, **kwargs)


def reflect_index(length: int, radius: int, device=None) -> torch.Tensor:
    """``(length, 2 * radius + 1)`` indices ``z - radius .. z + radius`` of every ``z``, mirrored
    into ``[0, length)`` like numpy's ``reflect`` padding (and the predictor's tile borders),
    repeated as often as needed; a single slice repeats itself."""
    offsets = torch.arange(-radius, radius + 1, device=device)
    idx = torch.arange(length, device=device)[:, None] + offsets[None, :]
    if length == 1:
        return torch.zeros_like(idx)
    period = 2 * (length - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx < length, idx, period - idx)


class UNet25DStack(_Volumetric2D):
    """Slice-stack 2.5D U-Net: ``slices`` neighbouring slices in, the centre slice out.

    For every slice ``z`` of a ``(B, C, D, H, W)`` volume the slices ``z - k//2 .. z + k//2``
    (mirrored at the ends of the stack) become the ``C * k`` input channels of one shared 2D U-Net
    (channel ``c * k + j`` is channel ``c`` of slice ``z - k//2 + j``), which predicts slice ``z``.
    All ``B * D`` slices go through the 2D U-Net as one batch. Context along z is exactly
    ``k // 2`` slices per side, in-plane it is the 2D U-Net's.

    Args:
        spatial_dims: must be 3 (the network takes volumes).
        in_channels, out_channels: channels per voxel and classes.
        features: channels per level of the 2D U-Net, top to bottom.
        norm: normalisation of the 2D U-Net (``"batch"``, ``"instance"``, ``"group"``, ``"none"``).
        slices: ``k``, an odd number of neighbouring slices seen per prediction (1 = a plain 2D
            U-Net applied slice by slice).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "batch", slices: int = 5):
        super().__init__()
        _check_volumetric(spatial_dims, in_channels, out_channels, "The slice-stack 2.5D U-Net")
        if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1 or slices % 2 == 0:
            raise ValueError(f"slices must be an odd positive number (the centre slice and as many on each side), "
                             f"got {slices!r}.")
        self.slices = slices
        self.unet = UNet(spatial_dims=2, in_channels=in_channels * slices, out_channels=out_channels,
                         features=features, padding="same", norm=norm)
        self.spatial_dims, self.in_channels, self.out_channels = 3, in_channels, out_channels
        self.config = dict(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                           features=list(self.unet.config["features"]), norm=norm, slices=slices)
        self.size_divisor = (1, *self.unet.size_divisor)
        self.margin = 0

    @property
    def receptive_radius(self) -> tuple[int, ...]:
        """Voxels per side that influence an output voxel (an upper bound), per axis (z, y, x)."""
        return (self.slices // 2, *self.unet.receptive_radius)

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        self.check_input(x)
        b, c, d, h, w = x.shape
        k = self.slices
        idx = reflect_index(d, k // 2, x.device)  # (D, k)
        stack = x[:, :, idx]  # (B, C, D, k, H, W)
        stack = stack.permute(0, 2, 1, 3, 4, 5).reshape(b * d, c * k, h, w)
        logits = self.unet(stack)  # (B * D, K, H, W)
        logits = logits.reshape(b, d, -1, h, w).permute(0, 2, 1, 3, 4).contiguous()
        return [logits] if side_outputs else logits


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


def _normalised(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates -> ``grid_sample``'s ``[-1, 1]`` with ``align_corners=True``."""
    return coords * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(coords)


def box_mean3(v: torch.Tensor) -> torch.Tensor:
    """3x3x3 average pooling with stride 1 of ``(B, K, D, H, W)``, keeping the shape; at the
    borders the mean is over the voxels inside (``count_include_pad=False``), for any size
    (``F.avg_pool3d`` refuses axes shorter than its kernel). Separable: a sum of 3 along each
    axis in turn, divided by the number of voxels inside."""
    total = v
    counts = []
    for axis in (2, 3, 4):
        n = v.shape[axis]
        padded = F.pad(total, [0, 0] * (4 - axis) + [1, 1])
        total = padded.narrow(axis, 0, n) + padded.narrow(axis, 1, n) + padded.narrow(axis, 2, n)
        c = torch.full((n,), 3.0, device=v.device, dtype=v.dtype)
        c[0] -= 1
        c[-1] -= 1
        counts.append(c.clamp_min(1.0))
    count = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return total / count


class UNet25DProjection(_Volumetric2D):
    """Projection-based 2.5D U-Net (Angermann et al. 2019): project, segment in 2D, back-project.

    Forward pass for a volume ``(B, C, D, H, W)`` (``D`` = z, the stack axis):

    1. **Projections.** Maximum-intensity projections (MIPs) along ``directions`` = p directions:
       along z (an ``(H, W)`` image), then along the rotated y axis after turning the volume
       about the z axis by ``θ_j = j * 180° / (p - 1)``, ``j = 0 .. p - 2`` (a ``(D, L_θ)``
       image): p = 3 gives the three axes (z, y at 0°, x at 90°), p = 5 adds the diagonals at 45°
       and 135°. The turned volume is sampled with ``torch.nn.functional.grid_sample`` (bilinear,
       one 2D rotation for all slices, so z is never interpolated) on a frame just large enough
       to hold the whole rotated (H, W) rectangle: ``L_θ = (W-1)|cos θ| + (H-1)|sin θ| + 1``
       detector pixels, no voxel is cut off. Samples outside the volume take the volume's
       minimum, so they never win a maximum. 0° and 90° are exact axis maxima (no resampling).
    2. **Shared 2D U-Net** on every projection (its input channels are the volume's channels);
       each image is padded at its far end (replicate) to a multiple of the U-Net's size divisor
       and cropped back, so the network accepts any volume size; projections of one shape run
       as one batch.
    3. **Filtration**, as in filtered back-projection: a small learnable 2D convolution per
       direction (``filter_size``, initialised to the identity) on the U-Net's output maps.
    4. **Back-projection**: every filtered map is smeared back along its direction, the classic
       pixel-driven back-projection (the transpose of a line-sum projection up to the linear
       interpolation): each voxel reads the detector pixel its ray hits,
       ``u = (x - cx) cos θ + (y - cy) sin θ``, linearly interpolated, i.e. the smear is rotated
       back; the maps are averaged over the directions used.
    5. **Fine-tuning operator**: 3x3x3 average pooling (stride 1, borders averaged over the
       voxels inside) and a learnable per-channel normalisation ``z = scale * v + shift``.

    Logits contract: the fine-tuning operator ends with a sigmoid, ``p = sigmoid(z)`` = the
    foreground probability. For ``out_channels = 2`` (background / foreground, the engine's binary target)
    the network returns ``[-z/2, z/2]``, whose softmax is exactly ``[1 - p, p]``; for
    ``out_channels = 1`` it returns ``z`` (the engine applies the sigmoid); for ``K >= 3`` classes
    the 2D U-Net predicts K maps per projection and the K normalised volumes ``z`` are the logits.

    Directions: in training mode each forward pass uses a random subset of the directions
    (``train_directions``: a count, or a fraction of p, drawn with torch's generator; the
    average is over the chosen ones), the "Random 2.5D U-net" regime; in eval mode all of them.

    The network sees its whole input at once (every output voxel depends on the whole window),
    so predictions of a tiled volume depend on the tile size; choose tiles as large as memory
    allows. There are no 3D convolutions: memory and time grow with the volume's size only
    through the projections and the back-projection.

    Args:
        spatial_dims: must be 3.
        in_channels, out_channels: channels per voxel and classes.
        features: channels per level of the shared 2D U-Net, top to bottom.
        norm: normalisation of the 2D U-Net.
        directions: p >= 3, the number of projection directions (see above).
        train_directions: directions per training forward pass, an int count (1 .. p) or a
            float fraction in (0, 1] of p (rounded, at least 1); ``1.0`` = always all. The
            default 0.6 (3 of 5) validated better than all directions in one short run on the
            synthetic nuclei stacks (validation Dice 0.64 vs 0.21 after 90 steps of 16 x 64 x 64
            patches; all directions fitted the training patches faster but generalised worse).
        filter_size: odd side of the per-direction learnable filters (1 = a learnable gain).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "batch", directions: int = 5,
                 train_directions: int | float = 0.6, filter_size: int = 3):
        super().__init__()
        _check_volumetric(spatial_dims, in_channels, out_channels, "The projection-based 2.5D U-Net")
        if isinstance(directions, bool) or not isinstance(directions, int) or directions < 3:
            raise ValueError(f"directions must be an integer >= 3 (z plus the y and x axes, then more angles about z), "
                             f"got {directions!r}.")
        if isinstance(filter_size, bool) or not isinstance(filter_size, int) or filter_size < 1 or filter_size % 2 == 0:
            raise ValueError(f"filter_size must be an odd positive integer, got {filter_size!r}.")
        self.n_directions = directions
        self.train_count = self._train_count(train_directions, directions)
        self.filter_size = filter_size
        #: rotation angles (degrees) of the projections along y; direction 0 is the z axis
        self.angles = [j * 180.0 / (directions - 1) for j in range(directions - 1)]
        maps = 1 if out_channels <= 2 else out_channels
        self.unet = UNet(spatial_dims=2, in_channels=in_channels, out_channels=maps, features=features,
                         padding="same", norm=norm)
        self._build_head(maps)
        self.spatial_dims, self.in_channels, self.out_channels = 3, in_channels, out_channels
        self.config = dict(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                           features=list(self.unet.config["features"]), norm=norm, directions=directions,
                           train_directions=train_directions, filter_size=filter_size)
        self.size_divisor = (1, 1, 1)  # projections are padded for the 2D U-Net inside
        self.margin = 0

    @staticmethod
    def _train_count(value, directions: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"train_directions must be a count (int) or a fraction (float), got {value!r}.")
        if isinstance(value, int):
            if not 1 <= value <= directions:
                raise ValueError(f"train_directions as a count must be between 1 and directions ({directions}), "
                                 f"got {value}.")
            return value
        if not 0.0 < value <= 1.0:
            raise ValueError(f"train_directions as a fraction must be in (0, 1], got {value}.")
        return max(1, min(directions, int(round(value * directions))))

    def _build_head(self, maps: int, device=None) -> None:
        """Per-direction filters and the fine-tuning normalisation for ``maps`` channels."""
        k = self.filter_size
        filters = []
        for _ in range(self.n_directions):
            conv = nn.Conv2d(maps, maps, k, padding=k // 2, padding_mode="replicate")
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[torch.arange(maps), torch.arange(maps), k // 2, k // 2] = 1.0
                conv.bias.zero_()
            filters.append(conv)
        self.filters = nn.ModuleList(filters).to(device)
        self.scale = nn.Parameter(torch.ones(maps, device=device))
        self.shift = nn.Parameter(torch.zeros(maps, device=device))

    def head_channels(self, out_channels: int) -> int:
        """One map (the foreground's ``z``) for 1 or 2 classes, else one per class."""
        return 1 if out_channels <= 2 else out_channels

    def replace_heads(self, channels: int) -> None:
        """A fresh head of the 2D U-Net and new identity filters and normalisation for ``channels``
        maps (1 <-> 2 classes keep the same foreground probability sigmoid(z): nothing is rebuilt)."""
        device = self.scale.device
        super().replace_heads(channels)
        self._build_head(channels, device)

    # -- geometry -------------------------------------------------------------------------
    @staticmethod
    def _extent(h: int, w: int, angle: float) -> tuple[int, int]:
        """(rays, detector pixels) of the frame that holds the (H, W) rectangle turned by ``angle``."""
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        detector = int(math.ceil((w - 1) * c + (h - 1) * s - 1e-6)) + 1
        rays = int(math.ceil((w - 1) * s + (h - 1) * c - 1e-6)) + 1
        return rays, detector

    def _project(self, x: torch.Tensor, direction: int) -> torch.Tensor:
        """MIP of ``x`` ``(B, C, D, H, W)`` along ``direction``: ``(B, C, H, W)`` for z,
        ``(B, C, D, L)`` for the turned y axes."""
        if direction == 0:
            return x.amax(dim=2)
        angle = self.angles[direction - 1]
        if angle == 0.0:
            return x.amax(dim=3)
        if angle == 90.0:
            return x.amax(dim=4)
        b, c, d, h, w = x.shape
        rays, detector = self._extent(h, w, angle)
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        kw = dict(device=x.device, dtype=x.dtype)
        u = (torch.arange(detector, **kw) - (detector - 1) / 2)[None, :]
        v = (torch.arange(rays, **kw) - (rays - 1) / 2)[:, None]
        xs = (w - 1) / 2 + u * cos - v * sin  # (rays, detector)
        ys = (h - 1) / 2 + u * sin + v * cos
        tol = 1e-3
        inside = (xs >= -tol) & (xs <= w - 1 + tol) & (ys >= -tol) & (ys <= h - 1 + tol)
        grid = torch.stack([_normalised(xs, w), _normalised(ys, h)], dim=-1)[None].expand(b, rays, detector, 2)
        turned = F.grid_sample(x.reshape(b, c * d, h, w), grid, mode="bilinear", padding_mode="border",
                               align_corners=True).reshape(b, c, d, rays, detector)
        lowest = x.detach().amin(dim=(2, 3, 4)).reshape(b, c, 1, 1, 1)
        turned = torch.where(inside, turned, lowest)
        return turned.amax(dim=3)

    def _back_project(self, m: torch.Tensor, direction: int, shape: tuple[int, int, int]) -> torch.Tensor:
        """Smear a map ``(B, K, H, W)`` (z) or ``(B, K, D, L)`` back into ``(B, K, D, H, W)``."""
        d, h, w = shape
        b, k = m.shape[:2]
        if direction == 0:
            return m.unsqueeze(2).expand(b, k, d, h, w)
        angle = self.angles[direction - 1]
        if angle == 0.0:
            return m.unsqueeze(3).expand(b, k, d, h, w)
        if angle == 90.0:
            return m.unsqueeze(4).expand(b, k, d, h, w)
        detector = m.shape[-1]
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        kw = dict(device=m.device, dtype=m.dtype)
        ys = torch.arange(h, **kw)[:, None] - (h - 1) / 2
        xs = torch.arange(w, **kw)[None, :] - (w - 1) / 2
        u = (xs * cos + ys * sin + (detector - 1) / 2).reshape(1, h * w)  # detector pixel of each ray
        z = torch.arange(d, **kw)[:, None]
        grid = torch.stack([_normalised(u, detector).expand(d, h * w), _normalised(z, d).expand(d, h * w)], dim=-1)
        out = F.grid_sample(m, grid[None].expand(b, d, h * w, 2), mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.reshape(b, k, d, h, w)

    def _segment(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The shared 2D U-Net on each projection; images of one shape run as one batch."""
        div = self.unet.size_divisor
        out: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape[2:]), []).append(i)
        for (rows, cols), members in by_shape.items():
            batch = torch.cat([images[i] for i in members])
            pad = (0, _round_up(cols, div[1]) - cols, 0, _round_up(rows, div[0]) - rows)
            if any(pad):
                batch = F.pad(batch, pad, mode="replicate")
            maps = self.unet(batch)[:, :, :rows, :cols]
            for i, part in zip(members, maps.split([images[i].shape[0] for i in members])):
                out[i] = part
        return out

    def chosen_directions(self) -> list[int]:
        """Directions of the next forward pass: all in eval mode, a random subset in training."""
        if not self.training or self.train_count >= self.n_directions:
            return list(range(self.n_directions))
        return sorted(torch.randperm(self.n_directions)[: self.train_count].tolist())

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        self.check_input(x)
        shape = tuple(x.shape[2:])
        chosen = self.chosen_directions()
        maps = self._segment([self._project(x, j) for j in chosen])
        volume = None
        for j, m in zip(chosen, maps):
            smeared = self._back_project(self.filters[j](m), j, shape)
            volume = smeared if volume is None else volume + smeared
        volume = volume / len(chosen)
        volume = box_mean3(volume)
        z = volume * self.scale.view(1, -1, 1, 1, 1) + self.shift.view(1, -1, 1, 1, 1)
        logits = torch.cat([-0.5 * z, 0.5 * z], dim=1) if self.out_channels == 2 else z
        return [logits] if side_outputs else logits


register(ModelSpec(
    name="unet-2.5d-stack", builder=UNet25DStack, title="2.5D U-Net (slice stack)", spatial_dims=3,
    defaults=dict(spatial_dims=3, features=(16, 32, 64, 128), slices=5),
    reference="2D U-Net on neighbouring slices as channels; Ronneberger, Fischer & Brox, MICCAI 2015",
))
register(ModelSpec(
    name="unet-2.5d", builder=UNet25DProjection, title="2.5D U-Net (projections)", spatial_dims=3,
    defaults=dict(spatial_dims=3, features=(16, 32, 64, 128), directions=5, train_directions=0.6),
    reference="Angermann, Haltmeier, Steiger, Pereverzyev Jr & Gizewski, arXiv:1902.00347 (2019); "
              "Angermann & Haltmeier, MLMIR 2019",
))
