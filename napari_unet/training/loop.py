"""One training run: its state (network, optimiser, best state so far, history) and its steps.

:func:`~napari_unet.training.trainer.train_iter` checks the settings, prepares the data and
drives a :class:`Run`: ``loop`` yields a :class:`TrainingEvent` per step and returns why it
ended, ``final_validation`` scores the last step, ``result`` loads the best state.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..devices import resolve_device, training_device
from ..jobs import PredictionCancelled, StepCancelled, interruptible
from . import validation
from .losses import DeepSupervisionLoss, SegmentationLoss

if TYPE_CHECKING:
    from .trainer import TrainSettings


@dataclass
class TrainingEvent:
    """One step of training.

    ``loss`` is this step's loss (``nan`` on a pure validation event); ``val_ap`` the latest
    validation AP@0.5 (None before the first validation); ``seconds_left`` an estimate (None
    until one exists); ``validated`` is True on the step where validation just ran, with its
    ``val_metrics``. An event with a ``phase`` is not a step: it says what the run does next
    for a while (e.g. choosing the post-processing after training), for a status line.
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
    phase: str = ""


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


def _state_copy(net: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _lr_factor(step: int, progress: float, warmup_steps: int, floor: float = 0.01) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``floor`` as ``progress`` -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * cosine


def _train_mode(net, freeze_norm: bool = False) -> None:
    """``net.train()``; with ``freeze_norm`` its normalisation layers with running statistics
    stay in eval mode (the statistics do not move; the affine parameters still train)."""
    net.train()
    if freeze_norm:
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.eval()


class Run:
    """One training run's state (network, optimiser, best state so far, history) and its steps."""

    def __init__(self, net, s: "TrainSettings", sampler, val_pairs, loss, stop, checkpoint, start, rng):
        self.net, self.s, self.sampler, self.val_pairs, self.stop = net, s, sampler, val_pairs, stop
        self.checkpoint, self.start, self.rng = checkpoint, start, rng
        self.dev = training_device(resolve_device(s.device))  # (no float16: no loss scaling here)
        self.loss_fn = loss or SegmentationLoss()
        if s.deep_supervision and not isinstance(self.loss_fn, DeepSupervisionLoss):
            self.loss_fn = DeepSupervisionLoss(self.loss_fn)
        self.side_outputs = isinstance(self.loss_fn, DeepSupervisionLoss)
        net.to(self.dev.device)
        _train_mode(net, s.freeze_norm)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.total_steps = s.epochs * s.steps_per_epoch if s.epochs is not None else None
        self.budget = s.minutes * 60.0 if s.minutes is not None else None
        self.initial = _state_copy(net)  # the fallback when training breaks before anything better exists
        self.best = {"state": None, "metrics": {}, "step": 0, "ap": -1.0}
        self.history, self.warnings, self.val_ap, self.step = [], [], None, 0
        self.batch_size = s.batch_size
        self.last_validation = time.perf_counter()

    # -- resume state ----------------------------------------------------------------------
    def resume(self) -> None:
        from .checkpoint import load_checkpoint

        if self.checkpoint is None or not os.path.isfile(self.checkpoint):
            raise ValueError(f"Nothing to resume from: the checkpoint {self.checkpoint} does not exist; train "
                             "without resuming (it is written after every epoch).")
        saved, saved_best = load_checkpoint(self.checkpoint, self.net, self.optimizer, self.rng,
                                            patch_shape=self.sampler.patch_shape)
        if saved.patch_shape is None:  # written before checkpoints recorded it
            self.warnings.append(f"The checkpoint {self.checkpoint} does not say which patches its run trained on: "
                                 f"resumed with patches of {' x '.join(map(str, self.sampler.patch_shape))} px.")
        self.step, self.batch_size, self.history = saved.step, saved.batch_size, saved.history
        self.start -= saved.seconds  # the budget counts the whole run
        self.best.update(state=saved_best, metrics=saved.best_metrics, step=saved.best_step, ap=saved.best_ap)
        self.val_ap = self.history[-1][1]["ap50"] if self.history else None

    def save_checkpoint(self, now: bool = False) -> None:
        """The run's state after an epoch (``now``: at once, as a stopped run leaves it); a failed
        write (a full disk) only ends resuming from here."""
        from .checkpoint import TrainingState, save_checkpoint

        if self.checkpoint is None or not self.step or (self.step % self.s.steps_per_epoch and not now):
            return
        best = self.best
        state = TrainingState(self.step, time.perf_counter() - self.start, self.batch_size, best["step"], best["ap"],
                              best["metrics"], self.history, tuple(self.sampler.patch_shape))
        try:
            save_checkpoint(self.checkpoint, self.net, self.optimizer, state, best["state"], self.rng)
        except OSError as exc:  # the run matters more than its resume state
            self.warnings.append(f"Cannot write the run's state to {self.checkpoint} ({exc.strerror or exc}): "
                                 "training goes on, but cannot be resumed from here.")
            self.checkpoint = None

    # -- the loop --------------------------------------------------------------------------
    def loop(self, tuner):
        """Steps until the budget is spent or something stops the run; yields an event per step
        and returns why it ended."""
        s = self.s
        while True:
            elapsed = time.perf_counter() - self.start
            progress = max(self.step / self.total_steps if self.total_steps else 0.0,
                           elapsed / self.budget if self.budget else 0.0)
            if progress >= 1.0:
                return "finished" if self.total_steps and self.step >= self.total_steps else "time budget"
            if self.stop is not None and self.stop.is_set():
                return self.stopped()
            factor = _lr_factor(self.step, progress, s.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = s.lr * factor
            tuner.before_step()
            outcome, value, parts = self.train_step()
            if outcome == "retry":
                continue
            if outcome:
                return self.stopped() if outcome == "stopped by user" else outcome
            self.optimizer.step()
            tuner.after_step()
            self.step += 1
            metrics, improved = None, False
            # every epoch, and at least every quarter of a time budget (a short run validates 3+ times)
            due = self.step % s.steps_per_epoch == 0 or \
                (self.budget is not None and time.perf_counter() - self.last_validation >= self.budget / 4)
            if due and self.val_pairs:
                metrics = self.validate()
                self.last_validation = time.perf_counter()
                if metrics is None:
                    return self.stopped()
                improved = self.best["step"] == self.step
            self.save_checkpoint()
            yield self.event(float(value.detach()), s.lr * factor, metrics, parts, improved)
            if s.patience is not None and metrics is not None and \
                    sum(step > self.best["step"] for step, _ in self.history) >= s.patience:
                return f"early stop: no better validation AP@0.5 in {s.patience} validations"

    def stopped(self) -> str:
        """Stopped between steps (Cancel, napari closing, Ctrl-C): the state is saved as it is, so
        that a resumed run goes on from here rather than from the last epoch."""
        self.save_checkpoint(now=True)
        return "stopped by user"

    def train_step(self):
        """The forward and backward pass of one step: ``(outcome, loss, parts)``, where outcome is
        None (ready for the optimizer's step), ``"retry"`` (with a smaller batch, after running out
        of accelerator memory) or why training stops. A step that does not go through is undone."""
        x, y, w = self.sampler.batch(self.batch_size)
        device = self.dev.device
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        w = None if w is None else torch.from_numpy(w).to(device)
        # batch-norm statistics change in the forward pass: keep them to undo a broken step
        buffers = [b.detach().clone() for b in self.net.buffers()]
        out_of_memory = False
        try:
            with interruptible(self.net, self.stop):
                value, parts, broken = self.forward_backward(x, y, w)
        except StepCancelled:
            self.undo_step(buffers)
            return "stopped by user", None, None
        except torch.OutOfMemoryError:
            out_of_memory = True  # (handled below, once the failed step's tensors are let go)
        if out_of_memory:
            self.undo_step(buffers)
            return self.smaller_batch(), None, None
        if broken:
            self.undo_step(buffers)
            return (f"non-finite {broken} at step {self.step + 1}: lower the learning rate, or check the images for "
                    "NaN/Inf values"), None, None
        return None, value, parts

    def forward_backward(self, x, y, w):
        """``(loss, its parts, None or what broke)``; gradients are clipped and ready."""
        weight = self.s.classification_weight
        with self.dev.autocast():
            if weight:
                logits, present = self.net(x, side_outputs=self.side_outputs, with_object_probability=True)
            else:
                logits = self.net(x, side_outputs=True) if self.side_outputs else self.net(x)
        logits = [o.float() for o in logits] if self.side_outputs else logits.float()
        value, parts = self.loss_fn(logits, y, w)
        if weight:
            classification = self.net.classification_loss(present, y)
            value = value + weight * classification
            parts = {**parts, "cgm": float(classification.detach())}
        if not torch.isfinite(value):
            return value, parts, "loss"
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.s.max_grad_norm)
        return value, parts, None if torch.isfinite(grad_norm) else "gradient"

    def undo_step(self, buffers) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(self.net.buffers(), buffers):
                b.copy_(saved)

    def smaller_batch(self) -> str:
        """After running out of accelerator memory: ``"retry"`` with half the batch, or why not."""
        kind = self.dev.type.upper()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            self.warnings.append(f"Out of {kind} memory at step {self.step + 1}: continuing with batch size "
                                 f"{self.batch_size}.")
            return "retry"
        return (f"out of {kind} memory at step {self.step + 1} even with batch size 1: choose a smaller patch size "
                "or train on the CPU")

    def validate(self) -> dict | None:
        """Validation metrics (the best state kept), or None when the stop event cancelled the pass."""
        s = self.s
        try:
            metrics = validation.validate(self.net, self.val_pairs, s.normalization, s.device, s.postprocess,
                                          s.target, stop=self.stop)
        except PredictionCancelled:
            return None
        finally:
            _train_mode(self.net, s.freeze_norm)
        self.history.append((self.step, metrics))
        self.val_ap = metrics["ap50"]
        if self.val_ap > self.best["ap"]:
            self.best.update(state=_state_copy(self.net), metrics=metrics, step=self.step, ap=self.val_ap)
        return metrics

    def event(self, loss: float, lr: float, metrics, parts, improved: bool) -> TrainingEvent:
        elapsed = time.perf_counter() - self.start
        left = [self.budget - elapsed] if self.budget else []
        if self.total_steps:
            left.append((self.total_steps - self.step) * elapsed / self.step)
        return TrainingEvent(self.step, (self.step - 1) // self.s.steps_per_epoch + 1, loss, self.val_ap, lr,
                             max(0.0, min(left)), self.total_steps, metrics is not None, metrics, parts or {},
                             improved)

    # -- the end ---------------------------------------------------------------------------
    def final_validation(self, stopped: str):
        """A run that ended on its budget is validated at its last step too (unless it just was)."""
        if stopped in ("finished", "time budget") and self.val_pairs and self.step \
                and (not self.history or self.history[-1][0] != self.step):
            metrics = self.validate()
            if metrics is None:
                return "stopped by user"
            yield TrainingEvent(self.step, (self.step - 1) // self.s.steps_per_epoch + 1, float("nan"), self.val_ap,
                                0.0, 0.0, self.total_steps, True, metrics, improved=self.best["step"] == self.step)
        return stopped

    def result(self, stopped: str) -> TrainingResult:
        """The best state by validation (loaded into the network) and what happened."""
        best = self.best
        if stopped.startswith(("non-finite", "out of")):
            stopped += ("; the best validated model so far is kept" if best["state"] is not None
                        else "; nothing was validated yet" if self.val_pairs else "; the last finite weights are kept")
        if best["state"] is None:  # no validation: keep the last state, unless the weights themselves broke
            last = _state_copy(self.net)
            usable = all(bool(torch.isfinite(v).all()) for v in last.values() if v.is_floating_point())
            best.update(state=last if usable else self.initial, step=self.step if usable else 0)
        self.net.load_state_dict(best["state"])
        return TrainingResult(best["state"], best["metrics"], best["step"], self.step,
                              time.perf_counter() - self.start, stopped, self.history, self.warnings)
