"""The training loop as a generator of progress events.

:func:`train_iter` samples augmented patches (:mod:`.patches`), optimises a
:class:`~napari_unet.training.losses.SegmentationLoss` with AdamW under a linear warm-up and
cosine learning-rate schedule, and after every "epoch" (``steps_per_epoch`` steps: patches are
random, so an epoch is a fixed number of steps, not a pass over the data) predicts the whole
held-out images with the real predictor and post-processing and scores them with
:func:`napari_unet.metrics.evaluate`. The best network by validation AP@0.5 wins. Widgets run
it in a thread worker; scripts and tests drain it with
:func:`napari_unet.inference.predictor.run_to_end`.

2D networks train on images ``(H, W)`` / ``(C, H, W)``, 3D networks (``net.spatial_dims == 3``:
the 3D U-Net, the 2.5D U-Nets) on volumes ``(D, H, W)`` / ``(C, D, H, W)`` with labels
``(D, H, W)``, on patches of one size per axis.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..inference.postprocess import probabilities_to_labels
from .threads import ThreadTuner
from ..inference.predictor import Predictor, predict
from ..jobs import PredictionCancelled, StepCancelled, interruptible
from ..metrics import evaluate, mean_metrics
from ..modelfile import DEFAULT_NORMALIZATION, LoadedModel, make_config
from .losses import DeepSupervisionLoss, SegmentationLoss
from .patches import PatchSampler, prepare_image

DEFAULT = DEFAULT_NORMALIZATION
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
class TrainingEvent:
    """One step of training.

    ``loss`` is this step's loss (``nan`` on a pure validation event); ``val_ap`` the latest
    validation AP@0.5 (None before the first validation); ``seconds_left`` an estimate (None
    until one exists); ``validated`` is True on the step where validation just ran, with its
    ``val_metrics``.
    """

    step: int
    epoch: int
    loss: float
    val_ap: float | None
    lr: float
    seconds_left: float | None
    total_steps: int | None = None
    validated: bool = False
    val_metrics: dict | None = None
    parts: dict = field(default_factory=dict)
    improved: bool = False  # this validation is the best so far (a checkpoint is worth writing now)


@dataclass
class TrainingResult:
    """What :func:`train_iter` returns: the best state (also loaded into the network)."""

    state: dict
    metrics: dict
    best_step: int
    steps: int
    seconds: float
    stopped: str  # "finished", "time budget", "stopped by user", or why training broke off
    history: list = field(default_factory=list)  # (step, val metrics) per validation
    warnings: list = field(default_factory=list)  # what was changed on the way (e.g. a smaller batch after OOM)


def as_loaded_model(net: torch.nn.Module, normalization: dict = DEFAULT, target: str = "binary") -> LoadedModel:
    """A copy of ``net`` in eval mode wrapped for the predictor (the training net is untouched)."""
    frozen = copy.deepcopy(net).eval()
    return LoadedModel(net=frozen, config=make_config(frozen, net.architecture or "unet", target, normalization), name="training")


def validate(net, pairs: Sequence, normalization: dict = DEFAULT, device: str = "auto",
             postprocess: dict | None = None, target: str = "binary",
             stop: threading.Event | None = None) -> dict:
    """Mean :func:`~napari_unet.metrics.evaluate` of whole images ``(image, labels)``, predicted
    by the tiled predictor and turned into labels by ``probabilities_to_labels(**postprocess)``.

    Setting ``stop`` raises :class:`~napari_unet.inference.predictor.PredictionCancelled` within
    about one layer's time (even inside a large tile), so a cancel never waits for a validation pass."""
    scores = [evaluate(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})))
              for probs, labels in _held_out_probabilities(net, pairs, normalization, device, target, stop)]
    return mean_metrics(scores)


def _held_out_probabilities(net, pairs, normalization, device, target, stop):
    """``(probabilities, labels)`` of each ``(image, labels)`` pair, predicted by the tiled predictor."""
    predictor = Predictor(as_loaded_model(net, normalization, target), device=device)
    for image, labels in pairs:
        # colour last, as image files hold it: the predictor makes it grey for one-channel networks
        rgb = np.ndim(image) == np.ndim(labels) + 1 and np.shape(image)[:-1] == np.shape(labels) \
            and np.shape(image)[-1] in (3, 4) and net.in_channels in (1, 3, 4)
        probs = predict(predictor.model, image, predictor=predictor, stop=stop, rgb=rgb).probabilities
        if stop is not None and stop.is_set():
            raise PredictionCancelled()
        yield probs, labels


def error_maps(net, triples: Sequence, normalization: dict = DEFAULT, device: str = "auto",
               postprocess: dict | None = None, target: str = "binary",
               stop: threading.Event | None = None) -> list:
    """For each ``(image, labels[, reviewed])``: where ``net`` (with ``postprocess``) gets the
    objects wrong (:func:`~napari_unet.training.focus.error_map`). Setting ``stop`` raises
    :class:`~napari_unet.inference.predictor.PredictionCancelled`."""
    from .focus import error_map

    pairs = [(t[0], t[1]) for t in triples]
    return [error_map(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})),
                      triple[2] if len(triple) > 2 else None)
            for (probs, labels), triple in zip(_held_out_probabilities(net, pairs, normalization, device, target,
                                                                       stop), triples)]


def tune_postprocess(net, pairs: Sequence, normalization: dict = DEFAULT, device: str = "auto",
                     target: str = "binary", stop: threading.Event | None = None) -> tuple[dict, list]:
    """The post-processing (threshold, minimum size, splitting) that scores best on the held-out
    ``(image, labels)`` pairs, each predicted once: ``(settings, table)`` of
    :func:`~napari_unet.inference.postprocess.choose_postprocess`. Setting ``stop`` raises
    :class:`~napari_unet.inference.predictor.PredictionCancelled`."""
    from ..inference.postprocess import choose_postprocess

    return choose_postprocess(list(_held_out_probabilities(net, pairs, normalization, device, target, stop)), target)


def _state_copy(net: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


_lazy_torch_ready = threading.Event()
_lazy_torch_lock = threading.Lock()
_lazy_torch_thread: threading.Thread | None = None


def _import_lazy_torch() -> None:
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # the optimizer will say what is wrong, in the caller's thread
        pass
    finally:
        _lazy_torch_ready.set()


def wait_for_torch(stop: threading.Event | None = None) -> bool:
    """PyTorch imports ``torch._dynamo`` the first time an optimizer is built: 1-5 s that no stop
    event can interrupt. Import it in a background thread and wait here, checking ``stop`` every
    50 ms. Returns False when ``stop`` was set first (the import goes on in the background, and
    the next call waits for the same import)."""
    global _lazy_torch_thread
    if _lazy_torch_ready.is_set():
        return True
    with _lazy_torch_lock:
        if _lazy_torch_thread is None:
            _lazy_torch_thread = threading.Thread(target=_import_lazy_torch, name="napari-unet import", daemon=True)
            _lazy_torch_thread.start()
    while not _lazy_torch_ready.wait(0.05):
        if stop is not None and stop.is_set():
            return False
    return True


def _lr_factor(step: int, progress: float, warmup_steps: int, floor: float = 0.01) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``floor`` as ``progress`` -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * cosine


def preload() -> None:
    """Import now, in the calling thread's time, what a first training run would import on its own.

    PyTorch's first optimizer imports its compiler stack (``torch._dynamo``: about 800 modules,
    sympy included, ~2 s here), and imports hold Python's GIL. A widget calls this in its warm-up
    worker when it opens, so that cost does not fall on a run while the user paints.
    """
    from . import checkpoint  # noqa: F401  (imported lazily by train_iter)

    wait_for_torch()


def _train_mode(net, freeze_norm: bool = False) -> None:
    """``net.train()``; with ``freeze_norm`` its normalisation layers with running statistics
    stay in eval mode (the statistics do not move; the affine parameters still train)."""
    net.train()
    if freeze_norm:
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.eval()


def train_iter(net, train_pairs: Sequence, val_pairs: Sequence = (), *,
               patch_size: int | Sequence[int] | None = None, batch_size: int = 4,
               lr: float = 1e-3, epochs: int | None = None, minutes: float | None = None,
               steps_per_epoch: int = 50, seed: int = 0, normalization: dict = DEFAULT,
               stop: threading.Event | None = None, device: str = "auto", loss: SegmentationLoss | None = None,
               weight_decay: float = 1e-4, warmup_steps: int = 50, max_grad_norm: float = 10.0,
               foreground_bias: float = 0.8, image_weights=None, postprocess: dict | None = None,
               gap_weight: float = 1.0, weight_map: dict | None = None,
               target: str = "binary", patience: int | None = None,
               deep_supervision: bool = False, augment=True,
               classification_weight: float = 0.0, checkpoint=None,
               resume: bool = False, focus_maps: Sequence | None = None,
               focus_bias: float = 0.0, freeze_norm: bool = False) -> Iterator[TrainingEvent]:
    """Train ``net`` (in place) on ``(image, instance labels)`` pairs; yields :class:`TrainingEvent`.

    Args:
        train_pairs: ``(image (H, W) or (C, H, W), labels (H, W))`` or ``(image, labels,
            reviewed (H, W) bool)`` where only the reviewed pixels count; for a 3D network
            ``(image (D, H, W) or (C, D, H, W), labels (D, H, W)[, reviewed (D, H, W)])``.
            Targets are binary (see :func:`~napari_unet.training.patches.binary_target`:
            boundaries between touching objects are background).
        val_pairs: whole held-out images (volumes) and their labels, scored by AP@0.5 after each epoch
            and, with a time budget, at least every quarter of it (and at the end).
        patch_size: side of the square (cubic) training patches, or one size per axis such as
            ``(16, 64, 64)``; multiples of ``net.size_divisor``. None: 256 for 2D networks,
            ``(16, 64, 64)`` for 3D ones (rounded up to the divisor).
        epochs / minutes: stop after ``epochs * steps_per_epoch`` steps and/or after ``minutes``
            of wall time (validation included), whichever comes first; give at least one.
            The cosine schedule follows whichever is further along.
        stop: a ``threading.Event``; when set, training ends within about one layer's time (see below).
        postprocess: keyword arguments of ``probabilities_to_labels`` for validation.
        gap_weight: cross-entropy weight of the gap pixels between touching objects (1 = none).
        weight_map: the U-Net paper's weight map for the cross-entropy, e.g. ``{"w0": 10, "sigma": 5}``
            (see :func:`~napari_unet.training.patches.prepare_image`); for anisotropic volumes add
            ``"spacing": (2, 1, 1)`` (z step, y, x in one unit).
        target: ``"binary"`` (2 output channels) or ``"boundary"`` (3: background, interior,
            boundary; touching objects are split by the post-processing's seeded watershed).
        patience: early stopping: end when this many validations in a row bring no better
            validation AP@0.5 (None: never).
        deep_supervision: train every side output of the network (``net(x, side_outputs=True)``,
            highest resolution first) with ``loss`` wrapped in a
            :class:`~napari_unet.training.losses.DeepSupervisionLoss` (targets and weights resized
            per level, levels weighted by normalised decaying weights); a ``DeepSupervisionLoss``
            given as ``loss`` is used as it is.
        classification_weight: networks with a classification-guided module (U-Net 3+): add
            ``classification_weight x cgm_loss`` (binary cross-entropy of "the patch holds an
            object", the paper's weight is 1) to the segmentation loss, so the module learns; its
            share shows in the events' loss parts as ``"cgm"``. 0 (default) leaves it untrained.
        focus_maps: one boolean map (or None) per training pair, e.g. where the base model was
            wrong (:func:`~napari_unet.training.focus.error_map`); ``focus_bias`` of the patches
            are placed on one of its pixels.
        augment: ``True`` for the default augmentation (flips, quarter turns, the paper's elastic
            deformation, scale, intensity, noise), ``False`` for none, or an ``Augmenter``.
        checkpoint: a file to write after every epoch (atomically): weights, AdamW state, step,
            time spent, best weights and validation history, random state (see
            :mod:`.checkpoint`).
        resume: continue from ``checkpoint`` where it stood (same data and settings; ``epochs`` /
            ``minutes`` count the whole run, the part before included).
        freeze_norm: keep the normalisation layers' running statistics as they are (batch norm
            in eval mode; their scale and shift still learn), as when fine-tuning a pretrained
            network on a few images whose small batches would pull the statistics away.

    Returns (as ``StopIteration.value``) a :class:`TrainingResult`; the best state by
    validation AP@0.5 (the last one without validation images) is loaded into ``net``. A
    non-finite loss or gradient stops training and keeps the best state so far (``stopped`` says
    why). Setting ``stop`` ends training within about one layer's time, in the middle of a step
    (which is then undone) or of a validation pass (which is then dropped). Out of accelerator
    memory, the batch is halved (``TrainingResult.warnings`` says so); at batch size 1 training
    stops and keeps the best state.
    """
    if epochs is None and minutes is None:
        raise ValueError("Give epochs or minutes (or both) to say how long to train.")
    if (epochs is not None and epochs < 1) or (minutes is not None and minutes <= 0) or steps_per_epoch < 1:
        raise ValueError("epochs, minutes and steps_per_epoch must be positive.")
    patch = patch_shape(net, patch_size)
    train_pairs, val_pairs = list(train_pairs), list(val_pairs)
    if getattr(net, "margin", 0):
        raise ValueError("This trainer handles 'same'-padding networks only (the output must match the patch).")
    if classification_weight and not hasattr(net, "cgm"):
        raise ValueError(f"classification_weight needs a network with a classification-guided module (unet3+); "
                         f"{type(net).__name__} has none.")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    from ..modelfile import TARGETS

    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}: choose one of {', '.join(TARGETS)}.")
    if net.out_channels != len(TARGETS[target]):
        raise ValueError(f"A {target!r} target needs a network with {len(TARGETS[target])} output channels; "
                         f"this one has {net.out_channels}.")
    for what, pairs in (("training", train_pairs), ("validation", val_pairs)):
        for i, pair in enumerate(pairs):
            if np.ndim(pair[1]) != net.spatial_dims:
                kind = "images: labels (H, W)" if net.spatial_dims == 2 else "volumes: labels (D, H, W)"
                raise ValueError(f"This {net.spatial_dims}D network trains on {kind}; {what} pair {i} has labels "
                                 f"of shape {np.shape(pair[1])}.")
    def stopped_before_training():
        return TrainingResult(_state_copy(net), {}, 0, 0, time.perf_counter() - start, "stopped by user")

    if not wait_for_torch(stop):
        return stopped_before_training()
    images = []
    for i, pair in enumerate(train_pairs):
        if stop is not None and stop.is_set():  # weight maps of large images take a while
            return stopped_before_training()
        images.append(prepare_image(pair[0], pair[1], normalization, patch, name=str(i), gap_weight=gap_weight,
                                    weight_map=weight_map, target=target,
                                    reviewed=pair[2] if len(pair) > 2 else None, in_channels=net.in_channels))
    for i, pair in enumerate(val_pairs):  # the same checks now, not after the first epoch
        prepare_image(pair[0], pair[1], normalization, name=f"{i} (validation)", target=target,
                      in_channels=net.in_channels)
    if focus_maps is not None:
        if len(focus_maps) != len(images):
            raise ValueError(f"focus_maps needs one map (or None) per training pair: {len(focus_maps)} for "
                             f"{len(images)}.")
        for im, mask in zip(images, focus_maps):
            im.set_focus(mask)
    sampler = PatchSampler(images, patch, rng, foreground_bias, augment=augment, image_weights=image_weights,
                           focus_bias=focus_bias)
    loss_fn = loss or SegmentationLoss()
    if deep_supervision and not isinstance(loss_fn, DeepSupervisionLoss):
        loss_fn = DeepSupervisionLoss(loss_fn)
    side_outputs = isinstance(loss_fn, DeepSupervisionLoss)
    net.to(dev.device)
    _train_mode(net, freeze_norm)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * steps_per_epoch if epochs is not None else None
    budget = minutes * 60.0 if minutes is not None else None

    def snapshot():
        return _state_copy(net)

    initial = snapshot()  # the fallback when training breaks before anything better exists
    best = {"state": None, "metrics": {}, "step": 0, "ap": -1.0}
    history, warnings, val_ap, stopped, step = [], [], None, "finished", 0
    if resume:
        from .checkpoint import load_checkpoint

        if checkpoint is None or not os.path.isfile(checkpoint):
            raise ValueError(f"Nothing to resume from: the checkpoint {checkpoint} does not exist; train without "
                             "resuming (it is written after every epoch).")
        saved, saved_best = load_checkpoint(checkpoint, net, optimizer, rng)
        step, batch_size, history = saved.step, saved.batch_size, saved.history
        start -= saved.seconds  # the budget counts the whole run
        best.update(state=saved_best, metrics=saved.best_metrics, step=saved.best_step, ap=saved.best_ap)
        val_ap = history[-1][1]["ap50"] if history else None

    def save_state():
        from .checkpoint import TrainingState, save_checkpoint

        state = TrainingState(step, time.perf_counter() - start, batch_size, best["step"], best["ap"],
                              best["metrics"], history)
        save_checkpoint(checkpoint, net, optimizer, state, best["state"], rng)

    def run_validation():
        """Validation metrics, or None when the stop event cancelled the pass."""
        nonlocal val_ap
        try:
            metrics = validate(net, val_pairs, normalization, device, postprocess, target, stop=stop)
        except PredictionCancelled:
            return None
        finally:
            _train_mode(net, freeze_norm)
        history.append((step, metrics))
        val_ap = metrics["ap50"]
        if val_ap > best["ap"]:
            best.update(state=snapshot(), metrics=metrics, step=step, ap=val_ap)
        return metrics

    # on the CPU the thread count that trains fastest now, measured (it changes when other programs run)
    tuner = ThreadTuner(enabled=dev.type == "cpu")
    try:
        last_validation = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            progress = max(step / total_steps if total_steps else 0.0, elapsed / budget if budget else 0.0)
            if progress >= 1.0:
                stopped = "finished" if total_steps and step >= total_steps else "time budget"
                break
            if stop is not None and stop.is_set():
                stopped = "stopped by user"
                break
            factor = _lr_factor(step, progress, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            tuner.before_step()
            x, y, w = sampler.batch(batch_size)
            x, y = torch.from_numpy(x).to(dev.device), torch.from_numpy(y).to(dev.device)
            w = None if w is None else torch.from_numpy(w).to(dev.device)
            # batch-norm statistics change in the forward pass: keep them to undo a broken step
            buffers = [b.detach().clone() for b in net.buffers()]

            def undo_step():
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for b, saved in zip(net.buffers(), buffers):
                        b.copy_(saved)

            broken = None
            try:
                with interruptible(net, stop):
                    with dev.autocast():
                        if classification_weight:
                            logits, present = net(x, side_outputs=side_outputs, with_object_probability=True)
                        else:
                            logits = net(x, side_outputs=True) if side_outputs else net(x)
                    logits = [o.float() for o in logits] if side_outputs else logits.float()
                    value, parts = loss_fn(logits, y, w)
                    if classification_weight:
                        from ..models.unet3p import cgm_loss

                        classification = cgm_loss(present, y)
                        value = value + classification_weight * classification
                        parts = {**parts, "cgm": float(classification.detach())}
                    broken = None if torch.isfinite(value) else "loss"
                    if broken is None:
                        optimizer.zero_grad(set_to_none=True)
                        value.backward()
                        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
                        broken = None if torch.isfinite(grad_norm) else "gradient"
            except StepCancelled:
                undo_step()
                stopped = "stopped by user"
                break
            except torch.OutOfMemoryError:
                logits = value = None  # let the failed step's tensors go before retrying
                undo_step()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size //= 2
                    warnings.append(f"Out of {dev.type.upper()} memory at step {step + 1}: continuing with batch "
                                    f"size {batch_size}.")
                    continue
                stopped = (f"out of {dev.type.upper()} memory at step {step + 1} even with batch size 1: choose a "
                           "smaller patch size or train on the CPU")
                break
            if broken:
                undo_step()
                stopped = (f"non-finite {broken} at step {step + 1}: lower the learning rate, or check the images "
                           "for NaN/Inf values")
                break
            optimizer.step()
            tuner.after_step()
            step += 1
            metrics, improved = None, False
            # every epoch, and at least every quarter of a time budget (a short run validates 3+ times)
            due = step % steps_per_epoch == 0 or (budget is not None and time.perf_counter() - last_validation >= budget / 4)
            if due and val_pairs:
                metrics = run_validation()
                last_validation = time.perf_counter()
                if metrics is None:
                    stopped = "stopped by user"
                    break
                improved = best["step"] == step
            if checkpoint is not None and step % steps_per_epoch == 0:
                try:
                    save_state()
                except OSError as exc:  # a full disk: the run matters more than its resume state
                    warnings.append(f"Cannot write the run's state to {checkpoint} ({exc.strerror or exc}): "
                                    "training goes on, but cannot be resumed from here.")
                    checkpoint = None
            elapsed = time.perf_counter() - start
            rate = elapsed / step
            left = [budget - elapsed] if budget else []
            if total_steps:
                left.append((total_steps - step) * rate)
            yield TrainingEvent(step, (step - 1) // steps_per_epoch + 1, float(value.detach()), val_ap, lr * factor,
                                max(0.0, min(left)), total_steps, metrics is not None, metrics, parts, improved)
            if patience is not None and metrics is not None and sum(s > best["step"] for s, _ in history) >= patience:
                stopped = f"early stop: no better validation AP@0.5 in {patience} validations"
                break

        if stopped in ("finished", "time budget") and val_pairs and (not history or history[-1][0] != step) and step:
            metrics = run_validation()
            if metrics is None:
                stopped = "stopped by user"
            else:
                yield TrainingEvent(step, (step - 1) // steps_per_epoch + 1, float("nan"), val_ap, 0.0, 0.0,
                                    total_steps, True, metrics, improved=best["step"] == step)
        if stopped.startswith(("non-finite", "out of")):
            stopped += ("; the best validated model so far is kept" if best["state"] is not None
                        else "; nothing was validated yet" if val_pairs else "; the last finite weights are kept")
        if best["state"] is None:  # no validation: keep the last state, unless the weights themselves broke
            last = snapshot()
            usable = all(bool(torch.isfinite(v).all()) for v in last.values() if v.is_floating_point())
            best.update(state=last if usable else initial, step=step if usable else 0)
        net.load_state_dict(best["state"])
        return TrainingResult(best["state"], best["metrics"], best["step"], step, time.perf_counter() - start,
                              stopped, history, warnings)
    finally:
        tuner.restore()
