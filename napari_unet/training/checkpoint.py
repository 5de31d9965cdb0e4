"""Training checkpoints that a run resumes from: weights, optimizer, where it stood, random state.

One safetensors file (never a pickle), written atomically after every epoch (and where a
stopped run stops) by
:func:`~napari_unet.training.trainer.train_iter` when given ``checkpoint=``:

* tensors ``model/<name>`` (the weights now), ``best/<name>`` (the best validated weights, if
  any), ``optim/<i>/<key>`` (AdamW's per-parameter state: ``step``, ``exp_avg``,
  ``exp_avg_sq``) and ``rng/torch`` (PyTorch's CPU random state);
* JSON metadata ``napari_unet_checkpoint``: the step, the training time spent, the best
  validation score and step, the validation history, the batch size, the patch shape and the
  numpy generator's state (the patch sampler and augmentation draw from it).

A run resumed from a checkpoint takes the same steps as one that never stopped (on the CPU,
up to floating-point rounding; tested).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write

FORMAT = "napari-unet-checkpoint"
KEY = "napari_unet_checkpoint"


@dataclass
class TrainingState:
    """Where a run stood after an epoch."""

    step: int
    seconds: float
    batch_size: int
    best_step: int = 0
    best_ap: float = -1.0
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # (step, metrics) of every validation
    patch_shape: tuple | None = None  # None in checkpoints written before it was recorded


def save_checkpoint(path: str | os.PathLike, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainingState, best: dict | None, numpy_rng: np.random.Generator) -> Path:
    """Write a checkpoint atomically (a kill leaves the previous one)."""
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if best is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    for i, param_state in optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            tensors[f"optim/{i}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {"format": FORMAT, "step": state.step, "seconds": state.seconds, "batch_size": state.batch_size,
            "best_step": state.best_step, "best_ap": state.best_ap, "best_metrics": state.best_metrics,
            "history": state.history, "numpy_rng": numpy_rng.bit_generator.state,
            "patch_shape": None if state.patch_shape is None else [int(n) for n in state.patch_shape]}
    path = Path(path)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={KEY: json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    numpy_rng: np.random.Generator, patch_shape=None) -> tuple[TrainingState, dict | None]:
    """Restore ``net``, ``optimizer`` and the random state from a checkpoint; returns where the run
    stood and the best validated weights (None if none). ``ValueError`` names what does not fit:
    another network, or ``patch_shape`` (the resuming run's) other than the checkpoint's (checked
    before anything is restored)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable napari-unet training checkpoint ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a napari-unet training checkpoint.")
    saved_patch = meta.get("patch_shape")
    if saved_patch is not None and patch_shape is not None and tuple(saved_patch) != tuple(patch_shape):
        def shown(shape):
            return " x ".join(str(int(n)) for n in shape)

        raise ValueError(f"{path}: the run was trained on patches of {shown(saved_patch)} px, this one asks for "
                         f"{shown(patch_shape)} px: resume with the same patch size, or train without resuming.")
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        net.load_state_dict(model, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the checkpoint belongs to another network ({str(exc).splitlines()[0]}); "
                         "start without resuming, or give the network it was made with.") from None
    device = next(net.parameters()).device
    optim_state = optimizer.state_dict()
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            per_param.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    optim_state["state"] = per_param
    optimizer.load_state_dict(optim_state)
    torch.set_rng_state(tensors["rng/torch"])
    numpy_rng.bit_generator.state = meta["numpy_rng"]
    best = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")} or None
    state = TrainingState(step=int(meta["step"]), seconds=float(meta["seconds"]), batch_size=int(meta["batch_size"]),
                          best_step=int(meta["best_step"]), best_ap=float(meta["best_ap"]),
                          best_metrics=dict(meta["best_metrics"]),
                          history=[(int(s), dict(m)) for s, m in meta["history"]],
                          patch_shape=None if meta.get("patch_shape") is None else tuple(meta["patch_shape"]))
    return state, best
