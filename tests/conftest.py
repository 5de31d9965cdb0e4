"""Shared fixtures: small model files with random weights, and an isolated user model folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """One torch thread for tiny tensors: as fast, and OpenMP threads crawl when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fp32_on_the_cpu(request, monkeypatch):
    """Exact comparisons (tiled vs untiled, resumed vs uninterrupted, cached vs fresh) assume fp32:
    on a CPU with AVX-512 BF16 or AMX the plugin runs bf16 autocast, whose rounding (up to ~2e-2
    in a probability) is not what those tests compare. Tests marked ``bf16`` keep the machine's
    choice."""
    if "bf16" in request.keywords:
        return
    import napari_unet.devices as devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)


@pytest.fixture(autouse=True)
def _isolated_model_dir(tmp_path_factory, monkeypatch):
    """Never touch the real user's model folder."""
    folder = tmp_path_factory.getbasetemp() / "user-models"
    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(folder))
    return folder


def _random_model(path: Path, architecture="unet", target="binary", **arguments) -> Path:
    import torch

    from napari_unet.modelfile import make_config, save_model
    from napari_unet.models import build_model

    torch.manual_seed(0)
    net = build_model(architecture, **arguments)
    # non-trivial batch-norm statistics so that folding them is exercised
    for module in net.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return save_model(path, net, make_config(net, architecture, target=target))


@pytest.fixture(scope="session")
def make_random_model(tmp_path_factory):
    """Factory: ``make_random_model(name, architecture="unet", **arguments)`` -> path of a model file."""
    folder = tmp_path_factory.mktemp("models")

    def make(name="tiny", architecture="unet", target="binary", **arguments):
        arguments.setdefault("features", (8, 16, 32))
        return _random_model(folder / f"{name}.safetensors", architecture, target, **arguments)

    return make


@pytest.fixture(scope="session")
def tiny_model(make_random_model):
    """A small random-weight 2D U-Net (3 levels) as a LoadedModel."""
    from napari_unet.modelfile import load_model

    return load_model(make_random_model("tiny"))


@pytest.fixture(scope="session")
def nuclei_sample():
    from napari_unet.synthetic import fluorescent_nuclei

    return fluorescent_nuclei(seed=0)


def shared_data(name: str) -> Path:
    """A folder of ``../shared/data`` or a skip when this machine does not have it."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not on this machine")
    return folder


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
