import pytest
import torch

from napari_unet.devices import resolve_device


def test_auto_resolves_to_an_available_device():
    info = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert info.type == expected
    assert info.name  # shown in the widget, e.g. "cpu, 2 threads"


def test_cpu_name_and_precision():
    info = resolve_device("cpu")
    assert info.name.startswith("cpu, ") and "thread" in info.name
    with info.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype in (torch.float32, torch.bfloat16)


def test_bad_names_and_missing_devices_are_explained():
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
