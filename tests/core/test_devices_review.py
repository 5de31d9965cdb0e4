"""Mixed precision follows what the chosen device really has: native bf16 on CUDA from compute
capability 8.0 (asked of that device), fp16 before; no autocast where PyTorch has none for the device
type (MPS before PyTorch 2.5). No GPU is needed: torch's answers are replaced."""

from __future__ import annotations

import contextlib

import pytest
import torch

import napari_unet.devices as devices
from napari_unet.devices import DeviceInfo, resolve_device


@pytest.fixture
def two_gpus(monkeypatch):
    """cuda:0 an A100 (8.0), cuda:1 a T4 (7.5) whose bf16 torch calls supported (it emulates it)."""
    capability = {0: (8, 0), 1: (7, 5)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: ["A100", "Tesla T4"][torch.device(d).index])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability[torch.device(d).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated bf16 counts there
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cuda_bf16_only_from_compute_capability_8_of_the_chosen_device(two_gpus):
    assert resolve_device("cuda:0").autocast_dtype == torch.bfloat16
    assert resolve_device("cuda").autocast_dtype == torch.bfloat16  # cuda:0
    t4 = resolve_device("cuda:1")  # the current device is cuda:0 (bf16): the T4 is asked, and runs fp16
    assert t4.autocast_dtype == torch.float16 and t4.name == "cuda:1 Tesla T4"
    assert resolve_device("cuda:1", mixed_precision=False).autocast_dtype is None


def _old_torch(monkeypatch, has_check: bool):
    """A PyTorch without MPS autocast (before 2.5): torch.autocast("mps") raises, as it did there."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if device_type == "mps":
            raise RuntimeError("User specified an unsupported autocast device_type 'mps'")
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    if has_check:  # PyTorch 2.4 has the check, and says no for mps
        monkeypatch.setattr(torch.amp, "is_autocast_available", lambda t: t in ("cpu", "cuda"), raising=False)
    else:  # before 2.4 there is none: CUDA and the CPU are assumed
        monkeypatch.delattr(torch.amp, "is_autocast_available", raising=False)


@pytest.mark.parametrize("has_check", [True, False])
def test_no_autocast_where_pytorch_has_none_for_the_device(monkeypatch, has_check):
    _old_torch(monkeypatch, has_check)
    for dtype in (torch.float16, None):
        context = DeviceInfo(torch.device("mps"), "mps (Apple GPU)", dtype).autocast()
        assert isinstance(context, contextlib.nullcontext)
        with context:
            pass
    assert not isinstance(DeviceInfo(torch.device("cpu"), "cpu", None).autocast(), contextlib.nullcontext)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert resolve_device("mps").autocast_dtype is None  # it runs fp32 there, and says so


def test_training_never_autocasts_to_float16():
    """The training loop does no loss scaling: float16 autocast (T4, V100, Apple MPS) would let
    small gradients underflow, so training runs in float32 there; bfloat16 stays."""
    import torch

    from napari_unet.devices import DeviceInfo, training_device

    fp16 = DeviceInfo(torch.device("cpu"), "a GPU without bf16", torch.float16)
    bf16 = DeviceInfo(torch.device("cpu"), "a GPU with bf16", torch.bfloat16)
    assert training_device(fp16).autocast_dtype is None and training_device(fp16).device == fp16.device
    assert training_device(bf16) is bf16
