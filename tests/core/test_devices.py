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


@pytest.mark.bf16
def test_bf16_on_a_cpu_that_has_it_segments_like_fp32(monkeypatch):
    """Where the CPU has AVX-512 BF16 or AMX the predictor runs bf16 autocast: the masks match fp32's."""
    import numpy as np

    import napari_unet.devices as devices
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.inference.segment import segment_iter
    from napari_unet.metrics import evaluate
    from napari_unet.synthetic import fluorescent_nuclei

    if not devices.cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16: it runs fp32")
    assert resolve_device("cpu").autocast_dtype == torch.bfloat16 and "bf16" in str(resolve_device("cpu"))
    image, _ = fluorescent_nuclei((256, 256), 30, seed=3)
    # one object size for both (an estimate per run could differ by a hair and resize differently)
    fast = run_to_end(segment_iter("unet", image, device="cpu", diameter=30))
    monkeypatch.setenv("NAPARI_UNET_CPU_PRECISION", "fp32")
    assert resolve_device("cpu").autocast_dtype is None
    exact = run_to_end(segment_iter("unet", image, device="cpu", diameter=30))
    assert np.abs(fast.prediction.probabilities - exact.prediction.probabilities).max() < 0.1
    assert evaluate(exact.labels, fast.labels)["ap50"] > 0.9
