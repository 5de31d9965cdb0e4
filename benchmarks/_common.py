"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import time

import numpy as np


def best_of(fn, repeats: int = 3):
    """(best wall time in seconds, last result) over ``repeats`` runs."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def benchmark_model(name: str = "unet"):
    """The bundled model if it is installed, else the same architecture with seeded random weights."""
    from napari_unet.modelfile import LoadedModel, bundled_models, load_model, make_config
    from napari_unet.models import build_model

    if name in bundled_models():
        return load_model(name)
    import torch

    torch.manual_seed(0)
    net = build_model(name).eval()
    return LoadedModel(net, make_config(net, name), None, name + " (random weights)")


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    from napari_unet.synthetic import fluorescent_nuclei

    n = int(60 * (size / 512) ** 2)
    return fluorescent_nuclei(shape=(size, size), n_nuclei=n, seed=seed)[0]
