"""PyTorch's shared libraries mapped into the process before ``import torch``, without holding the GIL.

``import torch`` loads ``libtorch_cpu`` (hundreds of MB) while holding Python's GIL: Python's
extension loader and ``ctypes.CDLL`` keep it during ``dlopen``. In a worker thread that still
stalls napari's event loop, for 0.2 s with the files in the page cache and longer when they are
read from disk. A ``dlopen`` called as a ``ctypes`` foreign function
releases the GIL; once the libraries are loaded, ``import torch`` finds them there and only links
to them. ``benchmarks/bench_import_stall.py`` measures the longest pause of the main thread.

The libraries are opened ``RTLD_LOCAL`` (as Python opens extension modules), so no symbol becomes
global that would not have been; one that is missing or fails to load is skipped, and
``import torch`` then loads (or reports) it as it always does. Only PyTorch's own ``torch/lib``
folder is looked in (pip wheels); elsewhere (a conda build's shared ``lib``) nothing is preloaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

#: in dependency order (each one's dependencies first); only those present are opened. Not
#: ``libtorch_python`` (its code expects the GIL held), and with a GPU build (``GPU_LIBRARIES``)
#: only ``CPU_ONLY``: PyTorch loads the CUDA (ROCm, XPU) libraries itself, in an order that keeps an
#: older toolkit on ``LD_LIBRARY_PATH`` from being picked up, and ``libtorch`` pulls them in
LIBRARIES = ("libc10", "libtorch_cpu", "libtorch")
GPU_LIBRARIES = ("libtorch_cuda", "libtorch_hip", "libtorch_xpu")
CPU_ONLY = ("libc10", "libtorch_cpu")


def _dlopen():
    """libc's ``dlopen`` as a foreign function (called with the GIL released), or None."""
    for name in (None, "libdl.so.2", "libc.so.6"):
        try:
            dlopen = ctypes.CDLL(name).dlopen
        except (OSError, AttributeError):
            continue
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        return dlopen
    return None


def torch_library_paths() -> list[Path]:
    """PyTorch's shared libraries in this environment, in the order to load them (empty without PyTorch)."""
    spec = importlib.util.find_spec("torch") if "torch" not in sys.modules else None
    if spec is None or not spec.origin:
        return []
    folder = Path(spec.origin).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    gpu_build = any((folder / f"{name}{suffix}").is_file() for name in GPU_LIBRARIES)
    names = [name for name in LIBRARIES if not gpu_build or name in CPU_ONLY]
    return [folder / f"{name}{suffix}" for name in names if (folder / f"{name}{suffix}").is_file()]


def preload_torch() -> list[str]:
    """Load PyTorch's shared libraries with the GIL released (Linux and macOS; nothing elsewhere,
    or once ``torch`` is imported). Returns the names of those loaded."""
    if os.name != "posix":
        return []
    paths = torch_library_paths()
    dlopen = _dlopen() if paths else None
    if dlopen is None:
        return []
    flags = os.RTLD_NOW | os.RTLD_LOCAL
    return [path.name for path in paths if dlopen(os.fsencode(path), flags)]
