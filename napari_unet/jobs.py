"""Long work as generators: progress events, cancellation, draining.

Prediction, training, fine-tuning and block-wise segmentation are plain generators that yield
:class:`Progress` events (or events of their own) and return their result. The widgets run them
in a thread worker; the CLI, tests and scripts drain them with :func:`run_to_end`. A caller
cancels by setting a ``threading.Event`` it passed as ``stop``: the generator checks it between
steps (:func:`raise_if_stopped`) and, for steps that take seconds, inside a network's forward and
backward passes (:func:`interruptible`), and raises :class:`PredictionCancelled`.

This module imports neither Qt nor torch (:func:`interruptible` imports torch when it is used):
inference and training both depend on it, and on nothing of each other, to be stopped.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


class PredictionCancelled(Exception):
    """Raised inside a generator when the caller's stop event is set (prediction, training and
    block-wise runs alike: the name is older than the jobs it serves)."""


class StepCancelled(Exception):
    """The stop event was set in the middle of a forward or backward pass."""


@dataclass
class Progress:
    """One step of long work: ``done`` of ``total`` units (tiles, blocks, files), with a message."""

    done: int
    total: int
    message: str = ""
    plane: int = 0
    n_planes: int = 1


def raise_if_stopped(stop: threading.Event | None) -> None:
    """Raise :class:`PredictionCancelled` when ``stop`` is set (between steps of a job)."""
    if stop is not None and stop.is_set():
        raise PredictionCancelled()


@contextmanager
def interruptible(net, stop: threading.Event | None):
    """Check ``stop`` before every layer's forward pass and at every layer's backward pass, raising
    :class:`StepCancelled`: one training step or one large tile of a full-size U-Net takes seconds
    on a CPU, a layer a fraction of that, so Cancel answers within a second. ``net`` is a
    ``torch.nn.Module``. The hooks live inside the ``with`` block only: a network copied or saved
    later carries none."""
    if stop is None:
        yield
        return
    import torch  # here, not at the top: this module is imported by code that needs no torch

    def check(*_):
        if stop.is_set():
            raise StepCancelled()

    def watch_backward(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(check)  # returns None: the gradient is not changed

    handles = [net.register_forward_pre_hook(check)]
    for module in net.modules():
        if isinstance(module, torch.jit.ScriptModule):  # (a BioImage.IO package's TorchScript takes no hooks:
            continue  # its wrapper's hook above checks before each tile)
        if next(module.children(), None) is None:  # leaves: convolutions, norms, activations
            handles.append(module.register_forward_pre_hook(check))
            handles.append(module.register_forward_hook(watch_backward))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_to_end(gen: Iterator, on_progress: Callable[[object], None] | None = None):
    """Drain a progress generator and return its return value (for the CLI, tests and scripts)."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def relay(gen: Iterator, transform: Callable[[object], object]):
    """Yield ``transform(event)`` for every event of the progress generator ``gen`` and return its
    return value: ``result = yield from relay(gen, f)``. Closing the relay closes ``gen``."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield transform(event)
    finally:
        gen.close()


__all__ = ["PredictionCancelled", "StepCancelled", "Progress", "raise_if_stopped", "interruptible", "run_to_end",
           "relay"]
