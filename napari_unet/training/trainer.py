"""The training loop as a generator of progress events.

:func:`train_iter` samples augmented patches (:mod:`.patches`), optimises a
:class:`~napari_unet.training.losses.SegmentationLoss` with AdamW under a linear warm-up and
cosine learning-rate schedule, and after every "epoch" (``steps_per_epoch`` steps: patches are
random, so an epoch is a fixed number of steps, not a pass over the data) predicts the whole
held-out images with the real predictor and post-processing and scores them with
:func:`napari_unet.metrics.evaluate`. The best network by validation AP@0.5 wins. Widgets run
it in a thread worker; scripts and tests drain it with
:func:`napari_unet.jobs.run_to_end`.

2D networks train on images ``(H, W)`` / ``(C, H, W)``, 3D networks (``net.spatial_dims == 3``:
the 3D U-Net, the 2.5D U-Nets) on volumes ``(D, H, W)`` / ``(C, D, H, W)`` with labels
``(D, H, W)``, on patches of one size per axis.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from .loop import Run, TrainingEvent, TrainingResult, _state_copy
from .losses import SegmentationLoss
from .patches import PatchSampler, prepare_image
from .threads import ThreadTuner
from .validation import DEFAULT, as_loaded_model, error_maps, tune_postprocess, validate  # noqa: F401 (re-exported)
from .warmup import preload, wait_for_torch  # noqa: F401 (re-exported)

__all__ = ["DEFAULT_PATCH", "TrainSettings", "TrainingEvent", "TrainingResult", "as_loaded_model", "error_maps",
           "patch_shape", "preload", "train_iter", "tune_postprocess", "validate", "wait_for_torch"]

#: Patch shape when none is given: 256 x 256 for 2D networks; for 3D networks 16 slices of
#: 64 x 64, which holds several nuclei of a thick-slice stack (z step ~2x the pixel); a training
#: step of the default 3D U-Net on it took 1.3x the bundled 2D U-Net's step on 256 x 256 (CPU).
DEFAULT_PATCH = {2: (256, 256), 3: (16, 64, 64)}


def patch_shape(net, patch_size=None) -> tuple[int, ...]:
    """The training patch shape for ``net``: ``patch_size`` (an int for every axis or one per
    axis; None = :data:`DEFAULT_PATCH`), checked against the network's ``size_divisor``."""
    dims = net.spatial_dims
    if patch_size is None:
        shape = DEFAULT_PATCH[dims]
        return tuple(-(-p // d) * d for p, d in zip(shape, net.size_divisor))
    if np.ndim(patch_size) == 0:
        shape = (int(patch_size),) * dims
    else:
        shape = tuple(int(p) for p in patch_size)
        if len(shape) != dims:
            raise ValueError(f"patch_size needs {dims} sizes (one per axis) for this {dims}D network, got {shape}.")
    divisor = tuple(net.size_divisor)
    if any(p < d or p % d for p, d in zip(shape, divisor)):
        if np.ndim(patch_size) == 0 and len(set(divisor)) == 1:
            raise ValueError(f"patch_size must be a multiple of {divisor[0]} for this network, got {patch_size}.")
        raise ValueError(f"patch_size {shape} must be a multiple of {divisor} per axis for this network.")
    return shape


@dataclass
class TrainSettings:
    """Every setting of :func:`train_iter`, with its default: the one place that holds them.

    ``patch_size``: side of the square (cubic) training patches, or one size per axis such as
    ``(16, 64, 64)``; multiples of ``net.size_divisor``; None: 256 for 2D networks,
    ``(16, 64, 64)`` for 3D ones. ``epochs`` / ``minutes``: stop after ``epochs *
    steps_per_epoch`` steps and/or ``minutes`` of wall time (validation included), whichever
    comes first; give at least one (the cosine schedule follows whichever is further along).
    ``postprocess``: keyword arguments of ``probabilities_to_labels`` for validation.
    ``gap_weight``: cross-entropy weight of the gap pixels between touching objects (1 = none).
    ``weight_map``: the U-Net paper's weight map for the cross-entropy, e.g. ``{"w0": 10,
    "sigma": 5}`` (see :func:`~napari_unet.training.patches.prepare_image`; add ``"spacing": (2,
    1, 1)`` for anisotropic volumes). ``target``: ``"binary"`` (2 outputs) or ``"boundary"`` (3:
    background, interior, boundary). ``patience``: end when this many validations in a row bring
    no better AP@0.5 (None: never). ``deep_supervision``: train every side output (highest
    resolution first) with the loss wrapped in a
    :class:`~napari_unet.training.losses.DeepSupervisionLoss`. ``augment``: True (flips, quarter
    turns, the paper's elastic deformation, scale, intensity, noise), False, or an ``Augmenter``.
    ``classification_weight``: for networks with a classification-guided module (U-Net 3+), add
    this times the module's loss (the paper: 1; its share shows in the events' parts as
    ``"cgm"``; 0 leaves it untrained). ``focus_bias``: the share of patches placed on the
    ``focus_maps`` given to :func:`train_iter`. ``freeze_norm``: keep the normalisation layers'
    running statistics (batch norm in eval mode; scale and shift still learn), as when
    fine-tuning on a few images whose small batches would pull the statistics away.
    """

    patch_size: int | Sequence[int] | None = None
    batch_size: int = 4
    lr: float = 1e-3
    epochs: int | None = None
    minutes: float | None = None
    steps_per_epoch: int = 50
    seed: int = 0
    normalization: dict = field(default_factory=lambda: DEFAULT)
    device: str = "auto"
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_grad_norm: float = 10.0
    foreground_bias: float = 0.8
    postprocess: dict | None = None
    gap_weight: float = 1.0
    weight_map: dict | None = None
    target: str = "binary"
    patience: int | None = None
    deep_supervision: bool = False
    augment: object = True
    classification_weight: float = 0.0
    focus_bias: float = 0.0
    freeze_norm: bool = False

    def check(self) -> None:
        """``ValueError`` for a budget that says nothing or something impossible, or an unknown target."""
        from ..modelfile import TARGETS

        if self.epochs is None and self.minutes is None:
            raise ValueError("Give epochs or minutes (or both) to say how long to train.")
        if (self.epochs is not None and self.epochs < 1) or (self.minutes is not None and self.minutes <= 0) \
                or self.steps_per_epoch < 1:
            raise ValueError("epochs, minutes and steps_per_epoch must be positive.")
        if self.target not in TARGETS:
            raise ValueError(f"Unknown target {self.target!r}: choose one of {', '.join(TARGETS)}.")


SETTING_NAMES = frozenset(f.name for f in fields(TrainSettings))


def _check(net, s: TrainSettings, train_pairs: list, val_pairs: list) -> tuple[int, ...]:
    """The patch shape, after ``ValueError`` for anything the run cannot do (before any work)."""
    from ..modelfile import TARGETS

    s.check()
    patch = patch_shape(net, s.patch_size)
    if getattr(net, "margin", 0):
        raise ValueError("This trainer handles 'same'-padding networks only (the output must match the patch).")
    if s.classification_weight and not getattr(net, "has_classifier", False):
        raise ValueError(f"classification_weight needs a network with a classification-guided module (unet3+); "
                         f"{type(net).__name__} has none.")
    resolve_device(s.device)
    if net.out_channels != len(TARGETS[s.target]):
        raise ValueError(f"A {s.target!r} target needs a network with {len(TARGETS[s.target])} output channels; "
                         f"this one has {net.out_channels}.")
    for what, pairs in (("training", train_pairs), ("validation", val_pairs)):
        for i, pair in enumerate(pairs):
            if np.ndim(pair[1]) != net.spatial_dims:
                kind = "images: labels (H, W)" if net.spatial_dims == 2 else "volumes: labels (D, H, W)"
                raise ValueError(f"This {net.spatial_dims}D network trains on {kind}; {what} pair {i} has labels "
                                 f"of shape {np.shape(pair[1])}.")
    return patch


def _sampler(net, s: TrainSettings, patch, train_pairs, val_pairs, rng, stop, image_weights, focus_maps):
    """The patch sampler over the prepared training images (targets, weight maps), or None when
    ``stop`` was set while preparing them (weight maps of large images take a while)."""
    images = []
    for i, pair in enumerate(train_pairs):
        if stop is not None and stop.is_set():
            return None
        images.append(prepare_image(pair[0], pair[1], s.normalization, patch, name=str(i), gap_weight=s.gap_weight,
                                    weight_map=s.weight_map, target=s.target,
                                    reviewed=pair[2] if len(pair) > 2 else None, in_channels=net.in_channels))
    for i, pair in enumerate(val_pairs):  # the same checks now, not after the first epoch
        prepare_image(pair[0], pair[1], s.normalization, name=f"{i} (validation)", target=s.target,
                      in_channels=net.in_channels)
    if focus_maps is not None:
        if len(focus_maps) != len(images):
            raise ValueError(f"focus_maps needs one map (or None) per training pair: {len(focus_maps)} for "
                             f"{len(images)}.")
        for im, mask in zip(images, focus_maps):
            im.set_focus(mask)
    return PatchSampler(images, patch, rng, s.foreground_bias, augment=s.augment, image_weights=image_weights,
                        focus_bias=s.focus_bias)


def train_iter(net, train_pairs: Sequence, val_pairs: Sequence = (), settings: TrainSettings | None = None, *,
               stop: threading.Event | None = None, loss: SegmentationLoss | None = None, image_weights=None,
               focus_maps: Sequence | None = None, checkpoint=None, resume: bool = False,
               **overrides) -> Iterator[TrainingEvent]:
    """Train ``net`` (in place) on ``(image, instance labels)`` pairs; yields :class:`TrainingEvent`.

    Args:
        train_pairs: ``(image (H, W) or (C, H, W), labels (H, W))`` or ``(image, labels,
            reviewed (H, W) bool)`` where only the reviewed pixels count; for a 3D network
            ``(image (D, H, W) or (C, D, H, W), labels (D, H, W)[, reviewed (D, H, W)])``.
            Targets are binary (see :func:`~napari_unet.training.patches.binary_target`:
            boundaries between touching objects are background) or 3-class (``target``).
        val_pairs: whole held-out images (volumes) and their labels, scored by AP@0.5 after each
            epoch and, with a time budget, at least every quarter of it (and at the end).
        settings: a :class:`TrainSettings`; ``overrides`` (its field names, e.g. ``lr=3e-3,
            minutes=5``) replace single values.
        stop: a ``threading.Event``; when set, training ends within about one layer's time.
        loss: the loss (default :class:`~napari_unet.training.losses.SegmentationLoss`); a
            ``DeepSupervisionLoss`` is used as it is.
        image_weights: how often each training pair is drawn, relative to the others.
        focus_maps: one boolean map (or None) per training pair, e.g. where the base model was
            wrong (:func:`~napari_unet.training.focus.error_map`); ``focus_bias`` of the patches
            are placed on one of its pixels.
        checkpoint: a file to write after every epoch and when stopped (atomically): weights,
            AdamW state, step, time spent, best weights and validation history, random state
            (see :mod:`.checkpoint`).
        resume: continue from ``checkpoint`` where it stood (same data and settings; ``epochs`` /
            ``minutes`` count the whole run, the part before included).

    Returns (as ``StopIteration.value``) a :class:`TrainingResult`; the best state by
    validation AP@0.5 (the last one without validation images) is loaded into ``net``. A
    non-finite loss or gradient stops training and keeps the best state so far (``stopped`` says
    why). Setting ``stop`` ends training within about one layer's time, in the middle of a step
    (which is then undone) or of a validation pass (which is then dropped). Out of accelerator
    memory, the batch is halved (``TrainingResult.warnings`` says so); at batch size 1 training
    stops and keeps the best state.
    """
    unknown = set(overrides) - SETTING_NAMES
    if unknown:
        raise TypeError(f"train_iter() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    s = replace(settings or TrainSettings(), **overrides)
    train_pairs, val_pairs = list(train_pairs), list(val_pairs)
    patch = _check(net, s, train_pairs, val_pairs)
    start = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    sampler = _sampler(net, s, patch, train_pairs, val_pairs, rng, stop, image_weights, focus_maps) \
        if wait_for_torch(stop) else None
    if sampler is None:  # stopped before training
        return TrainingResult(_state_copy(net), {}, 0, 0, time.perf_counter() - start, "stopped by user")
    run = Run(net, s, sampler, val_pairs, loss, stop, checkpoint, start, rng)
    if resume:
        run.resume()
    # on the CPU the thread count that trains fastest now, measured (it changes when other programs run)
    tuner = ThreadTuner(enabled=run.dev.type == "cpu")
    try:
        stopped = yield from run.loop(tuner)
        stopped = yield from run.final_validation(stopped)
        return run.result(stopped)
    finally:
        tuner.restore()


