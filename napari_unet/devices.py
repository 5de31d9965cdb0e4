"""Pick the compute device and its precision, and know how much memory the machine has.

``"auto"`` resolves to CUDA, then Apple MPS, then the CPU. Mixed precision is used only where
the device gains from it: bf16 autocast on CUDA GPUs with native bf16 (compute capability 8.0,
Ampere, and newer), fp16 on older ones (T4, V100: their bf16 is emulated), fp16 on MPS where this
PyTorch has autocast for it (2.5 and newer; else fp32), bf16 on CPUs with AVX-512 BF16 or AMX
(other CPUs run fp32, which is faster there than emulated bf16). ``NAPARI_UNET_CPU_PRECISION=fp32``
(or ``bf16``) overrides the CPU's choice, also in worker processes that inherit the environment.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DeviceInfo:
    """A resolved device: the torch device, a human-readable name and the autocast dtype."""

    device: torch.device
    name: str
    autocast_dtype: torch.dtype | None

    @property
    def type(self) -> str:
        return self.device.type

    def autocast(self):
        """Context manager for mixed precision on this device (a no-op where it does not pay, and
        where this PyTorch has no autocast for the device type)."""
        if not autocast_available(self.device.type):
            return contextlib.nullcontext()
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def __str__(self) -> str:
        return self.name


def autocast_available(device_type: str) -> bool:
    """Whether this PyTorch has ``torch.autocast`` for ``device_type`` (``torch.amp.is_autocast_available``
    where it exists, PyTorch 2.4 and newer; before it, CUDA and the CPU only: MPS autocast came in 2.5)."""
    check = getattr(torch.amp, "is_autocast_available", None)
    if check is not None:
        return bool(check(device_type))
    return device_type in ("cuda", "cpu")


def training_device(dev: DeviceInfo) -> DeviceInfo:
    """``dev`` for training: float16 autocast (pre-Ampere CUDA GPUs, Apple MPS) needs loss scaling,
    which the training loop does not do (small gradients would underflow to zero), so training runs
    in float32 there; bfloat16 has float32's range and stays. Prediction keeps float16."""
    if dev.autocast_dtype is torch.float16:
        return DeviceInfo(dev.device, dev.name, None)
    return dev


def cuda_autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a CUDA GPU with native bf16 (compute capability 8.0 and newer), else fp16.
    ``torch.cuda.is_bf16_supported()`` is not asked: it says True where bf16 is emulated (T4, V100),
    and of the current device rather than ``device``."""
    return torch.bfloat16 if tuple(torch.cuda.get_device_capability(device)) >= (8, 0) else torch.float16


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16() -> bool:
    """Whether CPU work runs bf16 autocast: ``NAPARI_UNET_CPU_PRECISION`` (``fp32`` / ``bf16``), else
    where the CPU has native bf16 (:func:`cpu_has_fast_bf16`)."""
    choice = os.environ.get("NAPARI_UNET_CPU_PRECISION", "auto").strip().lower()
    if choice in ("fp32", "float32"):
        return False
    if choice in ("bf16", "bfloat16"):
        return True
    return cpu_has_fast_bf16()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(choice: str | torch.device = "auto", mixed_precision: bool = True) -> DeviceInfo:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` into a :class:`DeviceInfo`.

    Raises ``ValueError`` when the name is unknown or the device is not available here.
    """
    name = str(choice).strip().lower()
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N).")
    if base == "auto":
        if torch.cuda.is_available():
            name, base = "cuda", "cuda"
        elif mps_available():
            name, base = "mps", "mps"
        else:
            name, base = "cpu", "cpu"
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was asked for but no CUDA GPU is available here: choose 'auto' or 'cpu'.")
        dev = torch.device(name if ":" in name else "cuda:0")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"There is no {dev}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        label = f"{dev} {torch.cuda.get_device_name(dev)}"
        amp = cuda_autocast_dtype(dev) if mixed_precision else None
        return DeviceInfo(dev, label, amp)
    if base == "mps":
        if not mps_available():
            raise ValueError("Apple MPS was asked for but is not available here: choose 'auto' or 'cpu'.")
        amp = torch.float16 if mixed_precision and autocast_available("mps") else None
        return DeviceInfo(torch.device("mps"), "mps (Apple GPU)", amp)
    threads = torch.get_num_threads()
    amp = torch.bfloat16 if (mixed_precision and cpu_bf16()) else None
    label = f"cpu, {threads} thread{'s' if threads != 1 else ''}" + (", bf16" if amp else "")
    return DeviceInfo(torch.device("cpu"), label, amp)


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(shape: tuple, n_out: int) -> None:
    """Refuse, with what to do, an image whose probabilities alone (``n_out`` float32 maps of
    ``shape``) would not fit in this machine's memory: numpy would only say it cannot allocate."""
    need = 4 * n_out * math.prod(int(n) for n in shape)
    total = physical_memory()
    if total and need > total:
        raise ValueError(f"The image (shape {tuple(shape)}) is too large to segment in one piece: its probabilities "
                         f"alone need {need / 2**30:,.0f} GiB, and this machine has {total / 2**30:,.0f} GiB. Segment "
                         "it block by block into a zarr store: napari_unet.inference.large.segment_to_zarr in Python, "
                         "'napari-unet predict --format zarr' on the command line (the Segment dock does so by "
                         "itself for large layers).")
