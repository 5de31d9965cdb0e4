"""Tiled prediction as a generator of progress events.

:func:`predict_iter` yields :class:`Progress` events between tiles and returns a
:class:`Prediction`; widgets run it in a thread worker, the CLI and tests drain it with
:func:`run_to_end`. Each plane is cut into equal tiles (see :mod:`.tiling`) that are read
(only that block of a dask array), normalised, batched through the network under
``torch.inference_mode`` and blended into a float32 probability map.

On the CPU the network runs with batch norm folded into the convolutions and channels-last
memory, which measured 10-25% faster here; tiles of about 512 px beat one huge forward pass
because they stay in cache (see ``benchmarks/bench_tiling.py``).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..devices import DeviceInfo, check_fits_in_memory, resolve_device
# The job utilities (Progress, PredictionCancelled, StepCancelled, interruptible, run_to_end, relay) live
# in napari_unet.jobs; they stay importable from here for code written before it
# (``from napari_unet.inference.predictor import predict, run_to_end``).
from .. import jobs
from ..jobs import PredictionCancelled, Progress, StepCancelled, interruptible, run_to_end
from ..modelfile import LoadedModel, load_model
from ..scaling import resize_image, scaled_shape
from .inputs import PreparedImage, fit_normalizer, prepare_image
from .tiling import DEFAULT_BLEND, DEFAULT_HALO, TilePlan, plan_tiles, read_window

#: Auto tile side on the CPU (2D): 480-512 px windows measured fastest per pixel here (they stay
#: in cache; 0.65 µs/px vs 0.78 at 752 px and 1.03 at 1088 px for the bundled U-Net, 2 cores).
CPU_TILE_2D = 512
#: 3D on the CPU: a budget of 128**3 voxels per window. Time per voxel is flat from ~0.5 M voxels
#: up (unet-3d: 4.5 µs/voxel at 64x128x128, 96**3 and 64x192x192; 14 at 32x64x64, 2 threads).
CPU_TILE_3D = 128


@dataclass
class Prediction:
    """Result of :func:`predict_iter`.

    ``probabilities``: ``(*planes, K, *spatial)`` float32, the probability of each class but
    the background (K = 1 for binary targets; interior and boundary for boundary targets).
    """

    probabilities: np.ndarray
    target: str
    device: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tile_window: tuple[int, ...] = ()
    spatial_dims: int = 2
    #: With ``side_outputs``: the name of each side output; ``probabilities`` then holds
    #: ``len(heads) * K`` channels, head-major (head 0's K classes first).
    heads: list[str] = field(default_factory=list)
    #: Networks with a classification-guided module (U-Net 3+): the "object present" probability of
    #: every tile, ``(*planes, *tiles per axis)``; tile ``t`` covers the cores of :meth:`Predictor.plan`.
    object_probability: np.ndarray | None = None
    #: the factor the image was resized by for the network (1: not resized); the probabilities
    #: have the image's shape, one of their pixels is ``scale`` network pixels across
    scale: float = 1.0

    @property
    def foreground(self) -> np.ndarray:
        """Foreground probability ``(*planes, *spatial)``."""
        k_axis = self.probabilities.ndim - self.spatial_dims - 1
        return self.probabilities.sum(axis=k_axis) if self.probabilities.shape[k_axis] > 1 else \
            np.take(self.probabilities, 0, axis=k_axis)


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every conv -> batch-norm pair folded into one convolution (eval only)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    return fused


def _auto_tile(net, device: DeviceInfo) -> int:
    if device.type == "cpu":
        return CPU_TILE_2D if net.spatial_dims == 2 else CPU_TILE_3D
    # GPUs: large tiles, bounded by a share of free memory (~6 live feature maps of the top width).
    width = net.config.get("features", [32])[0]
    free = torch.cuda.mem_get_info(device.device)[0] if device.type == "cuda" else 4e9
    bytes_per_px = 2 * 6 * width * 1.4
    side = (0.25 * free / bytes_per_px) ** (1 / net.spatial_dims)
    return int(min(2048 if net.spatial_dims == 2 else 256, max(128, side)))


class Predictor:
    """A loaded network on a device, ready for tiled prediction.

    Args:
        model: a :class:`LoadedModel`, a bundled model name or a model-file path.
        device: ``"auto" | "cpu" | "cuda" | "mps"``.
        tile_size: network input side in pixels, or ``"auto"``.
        halo: extra pixels each tile sees beyond its core per side (context + blend band). The
            default 32 gives masks with Dice >= 0.99 against an untiled forward; predictions are
            exact when ``halo - blend`` covers the network's receptive field. Ignored for
            valid-padding networks, whose own margin is the paper's overlap-tile context.
        blend: width of the cross-fade on each side of a seam.
        batch_size: tiles per forward pass, or ``"auto"`` (1 on CPU).
        side_outputs: predict every side output of a deep-supervision network in the same
            forward pass (``net(x, side_outputs=True)``); :attr:`heads` names them.
    """

    def __init__(self, model, device: str = "auto", tile_size: int | str = "auto", halo: int = DEFAULT_HALO,
                 blend: int = DEFAULT_BLEND, batch_size: int | str = "auto", side_outputs: bool = False):
        self.device = resolve_device(device)
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.spatial_dims = self.model.net.spatial_dims
        self._memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        self.net = self._inference_net()
        self.side_outputs = bool(side_outputs)
        self._tile_object_probability: dict[tuple[int, ...], float] | None = None
        #: "auto" 3D tiles spend a voxel budget per window where it saves most (see :meth:`plan`)
        self.budget_tiles = tile_size == "auto" and self.spatial_dims == 3
        if tile_size == "auto":
            tile_size = _auto_tile(self.model.net, self.device)
        try:
            self.tile_size = int(tile_size)
        except (TypeError, ValueError):
            raise ValueError(f"tile_size must be a number of pixels or 'auto', got {tile_size!r}.") from None
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {tile_size}.")
        if halo < 0 or blend < 0:
            raise ValueError("halo and blend cannot be negative.")
        if not self.model.net.margin and self.tile_size < 2 * halo + 16:
            raise ValueError(f"A tile of {self.tile_size} px leaves no room inside a halo of {halo} px on each side: "
                             f"use tile_size >= {2 * halo + 16} (e.g. 'auto') or a smaller halo.")
        self.margin = self.model.net.margin
        if self.margin:  # valid padding: the network's own margin is the context
            self.context, self.blend = self.margin, blend
        else:
            self.blend = min(blend, halo // 2)
            self.context = halo - self.blend
        self.batch_size = (1 if self.device.type == "cpu" else 4) if batch_size == "auto" else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 tile per forward pass (or 'auto'), got {batch_size!r}.")
        self.warnings: list[str] = []

    def _inference_net(self) -> nn.Module:
        """A copy of the model's network for this device (the caller's network, maybe one being
        trained, keeps its mode and device): on the CPU with batch norm folded and channels-last."""
        if self.device.type == "cpu":
            return fuse_batchnorm(self.model.net).to(memory_format=self._memory_format)
        return copy.deepcopy(self.model.net).eval().to(self.device.device)

    def recover_from_oom(self) -> str:
        """After running out of accelerator memory: halve the tiles, or move to the CPU.

        Returns what was done, for the user. Raises ``MemoryError`` when already on the CPU.
        """
        if self.device.type == "cpu":
            raise MemoryError("Out of memory on the CPU: choose a smaller tile size, or close other programs.")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.tile_size > 128:
            self.tile_size = max(128, self.tile_size // 2)
            return f"Out of {self.device.type.upper()} memory: retrying with {self.tile_size} px tiles."
        self.device = resolve_device("cpu")
        self.net = self._inference_net()
        self.batch_size = 1
        return "Out of GPU memory even with small tiles: continuing on the CPU (slower)."

    @property
    def heads(self) -> list[str]:
        """Names of the outputs :meth:`_forward` returns (one unless ``side_outputs``)."""
        return self.net.side_output_names() if self.side_outputs else ["output"]

    @property
    def n_outputs(self) -> int:
        """Channels of a prediction: classes but the background, times :attr:`heads`."""
        return max(1, self.model.net.out_channels - 1) * len(self.heads)

    # -- geometry -------------------------------------------------------------------------
    def plan(self, spatial_shape) -> TilePlan:
        """The tiles for an image of ``spatial_shape``.

        Windows of ``tile_size`` per axis; with ``tile_size="auto"`` in 3D, a budget of
        ``tile_size**3`` voxels per window instead,
        spent where it saves most: among the plans that take some axes whole (one window, no halo:
        there is no seam to hide along them, and an untiled pass sees no more) and share the rest of
        the budget equally between the others, the one that makes the network compute the fewest
        voxels per image voxel. A thin stack of 32 planes of 128 x 128 is then one window (it was
        27x the voxels with 96-voxel cubes); axes taken whole are zero-padded by the network at the
        image border, as at the border of every training patch. The halo per axis is scaled by the
        network's reach along it (its receptive radius, or else its pooling factor): thick-slice
        networks pool z less, and a slice stack of k slices sees only k // 2 planes either way.
        """
        net = self.model.net
        dims = self.spatial_dims

        def fit(axis):
            def f(n):
                # for valid nets the output must cover n - 2*margin pixels
                return net.valid_input_shape(tuple(n if a == axis else 1 for a in range(dims)))[axis]
            return f

        fits = [fit(a) for a in range(dims)]
        divisor = net.size_divisor
        if self.margin:  # valid padding: the network's own margin is the context on every axis
            contexts = [self.context] * dims
        else:
            reach = getattr(net, "receptive_radius", None) or divisor  # per axis, any scale
            contexts = [math.ceil(self.context * r / max(reach)) for r in reach]
        if not self.budget_tiles or self.margin:
            return plan_tiles(spatial_shape, [self.tile_size] * dims, contexts, self.blend, fits, divisor)
        budget = float(self.tile_size) ** dims
        best = None
        for whole in itertools.product((False, True), repeat=dims):
            windows = [fits[a](int(spatial_shape[a])) if whole[a] else 0 for a in range(dims)]
            used = math.prod(w for w in windows if w)
            rest = dims - sum(whole)
            if used > budget:
                continue
            side = int((budget / used) ** (1 / rest)) if rest else 0
            windows = [w or side for w in windows]
            plan = plan_tiles(spatial_shape, windows, [0 if w else c for w, c in zip(whole, contexts)],
                              [0 if w else self.blend for w in whole], fits, divisor)
            if math.prod(plan.window) > 1.5 * budget:  # the halo and rounding may not grow it far
                continue
            key = (plan.compute_ratio, plan.n_tiles)
            if best is None or key < best[0]:
                best = (key, plan)
        if best is None:  # an image too small for any split: tiles of tile_size as in 2D
            return plan_tiles(spatial_shape, [self.tile_size] * dims, contexts, self.blend, fits, divisor)
        return best[1]

    def warm_up(self, spatial_shape) -> None:
        """One forward pass on a blank tile of the size an image of ``spatial_shape`` is cut into,
        so that timings that follow do not include the first call's one-off set-up."""
        window = self.plan(spatial_shape).window
        self._forward(np.zeros((1, self.model.in_channels) + tuple(window), np.float32))

    # -- running --------------------------------------------------------------------------
    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of a batch of tiles, and the ``(B,)`` object-present probability of a
        network that declares a classifier (``has_classifier``; else ``None``)."""
        x = torch.from_numpy(batch).to(self.device.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=self._memory_format)
        classifier = getattr(self.net, "has_classifier", False)
        extra = {"with_object_probability": True} if classifier else {}
        present = None
        with torch.inference_mode(), self.device.autocast():
            outputs = self.net(x, side_outputs=True, **extra) if self.side_outputs else self.net(x, **extra)
            if classifier:
                outputs, present = outputs
                present = present.float().cpu().numpy()
            if not self.side_outputs:
                outputs = [outputs]
            probs = []
            for logits in outputs:
                logits = logits.float()
                probs.append(torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)[:, 1:])
            probs = probs[0] if len(probs) == 1 else torch.cat(probs, dim=1)
        return probs.cpu().numpy(), present

    def predict_plane(self, plane, normalization: dict, warnings: list[str], stop: threading.Event | None = None,
                      out: np.ndarray | None = None) -> Iterator[int]:
        """Predict one ``(C, *spatial)`` plane into ``out`` (``(K, *spatial)`` float32), yielding after each tile."""
        spatial = tuple(plane.shape[1:])
        normalize = fit_normalizer(plane, normalization, warnings)
        plan = self.plan(spatial)
        tiles = list(plan.tiles())
        out[...] = 0
        m = self.margin
        for b0 in range(0, len(tiles), self.batch_size):
            if stop is not None and stop.is_set():
                raise PredictionCancelled()
            chunk = tiles[b0:b0 + self.batch_size]
            batch = np.stack([normalize(read_window(plane, [ax.window_start(i) for ax, i in zip(plan.axes, t)],
                                                    plan.window)) for t in chunk])
            try:
                with interruptible(self.net, stop):
                    probs, present = self._forward(batch)
            except StepCancelled:
                raise PredictionCancelled() from None
            if self._tile_object_probability is not None and present is not None:
                self._tile_object_probability.update(zip(chunk, present.tolist()))
            for t, p in zip(chunk, probs):
                dst, src, weight = [slice(None)], [slice(None)], None
                for axis, (ax, i) in enumerate(zip(plan.axes, t)):
                    lo, hi = ax.write_range(i)
                    first = lo - (ax.window_start(i) + m)  # output index 0 sits at window_start + margin
                    dst.append(slice(lo, hi))
                    src.append(slice(first, first + hi - lo))
                    w = ax.weights(i).reshape([-1 if a == axis else 1 for a in range(self.spatial_dims)])
                    weight = w if weight is None else weight * w
                region = p[tuple(src)]
                out[tuple(dst)] += region * weight if plan.n_tiles > 1 else region
            yield len(chunk)


PREDICTOR_ARGUMENTS = ("device", "tile_size", "halo", "blend", "batch_size")


def take_predictor_arguments(kwargs: dict) -> dict:
    """Remove and return the :class:`Predictor` arguments among ``kwargs`` (the rest are for
    :func:`predict_iter`), for the generators that build a predictor when given none."""
    return {k: kwargs.pop(k) for k in PREDICTOR_ARGUMENTS if k in kwargs}


def predict_iter(model, image, *, channel_axis: int | None = None, rgb: bool = False, device: str = "auto",
                 tile_size: int | str = "auto", halo: int = DEFAULT_HALO, blend: int = DEFAULT_BLEND,
                 batch_size: int | str = "auto", stop: threading.Event | None = None,
                 predictor: Predictor | None = None, diameter: float | None = None) -> Iterator[Progress]:
    """Predict class probabilities for ``image``; yields :class:`Progress`, returns :class:`Prediction`.

    ``image`` is a numpy, memory-mapped or dask array: a 2D image or a stack of planes for 2D
    networks (predicted plane by plane), a volume for 3D networks; ``channel_axis`` / ``rgb``
    say where colour channels are. Setting ``stop`` ends the run at the next tile by raising
    :class:`PredictionCancelled`. ``diameter``: the objects' diameter in pixels (None: the
    model's own): a model that declares the diameter it works at sees each plane resized by
    their ratio (:attr:`Prediction.scale`); the probabilities always have the image's shape.
    """
    start = time.perf_counter()
    predictor = predictor or Predictor(model, device=device, tile_size=tile_size, halo=halo, blend=blend,
                                       batch_size=batch_size)
    lm = predictor.model
    prepared: PreparedImage = prepare_image(image, lm.spatial_dims, lm.in_channels, channel_axis, rgb)
    warnings = list(prepared.warnings)
    n_out = predictor.n_outputs
    check_fits_in_memory(prepared.plane_shape + prepared.spatial_shape, n_out)
    result = np.zeros(prepared.plane_shape + (n_out,) + prepared.spatial_shape, np.float32)
    n_planes = prepared.n_planes
    scale = lm.scale(diameter)
    net_shape = scaled_shape(prepared.spatial_shape, scale) if scale != 1 else prepared.spatial_shape
    plan = predictor.plan(net_shape)
    total, done = plan.n_tiles * n_planes, 0
    has_cgm = getattr(predictor.net, "has_classifier", False)
    present = np.full(prepared.plane_shape + tuple(ax.n for ax in plan.axes), np.nan, np.float32) if has_cgm else None
    yield Progress(0, total, f"predicting on {predictor.device}", 0, n_planes)
    for p in range(n_planes):
        out = result.reshape((-1, n_out) + prepared.spatial_shape)[p]
        plane = prepared.plane(p)
        if scale != 1:  # the network sees the plane resized; ``out`` gets its probabilities resized back
            plane = resize_image(np.asarray(plane), net_shape)
            net_out = np.zeros((n_out,) + net_shape, np.float32)
        else:
            net_out = out
        done_before = done
        while True:
            predictor._tile_object_probability = {} if has_cgm else None
            try:
                for n in predictor.predict_plane(plane, lm.normalization, warnings, stop, net_out):
                    done += n
                    yield Progress(done, total, f"plane {p + 1}/{n_planes}" if n_planes > 1 else "tiles", p, n_planes)
                break
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                # Apple's MPS reports running out of memory as a plain RuntimeError
                if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc).lower():
                    raise
                warnings.append(predictor.recover_from_oom())
                plan = predictor.plan(net_shape)
                done = done_before
                total = done + plan.n_tiles * (n_planes - p)
                if has_cgm and present.shape[len(prepared.plane_shape):] != tuple(ax.n for ax in plan.axes):
                    present = np.full(prepared.plane_shape + tuple(ax.n for ax in plan.axes), np.nan, np.float32)
        if scale != 1:
            out[...] = resize_image(net_out, prepared.spatial_shape)
            del net_out
        if has_cgm:
            grid = present.reshape((-1,) + present.shape[len(prepared.plane_shape):])[p]
            for tile, value in predictor._tile_object_probability.items():
                grid[tile] = value
    predictor._tile_object_probability = None
    return Prediction(result, lm.target, str(predictor.device), warnings, time.perf_counter() - start, plan.window,
                      lm.spatial_dims, predictor.heads if predictor.side_outputs else [], present, scale)


relay = jobs.relay  # not used here: kept importable from this module (see the imports)


def predict(model, image, **kwargs) -> Prediction:
    """Blocking form of :func:`predict_iter`."""
    return run_to_end(predict_iter(model, image, **kwargs))
