"""Paying PyTorch's one-off import costs before a run needs them, without blocking a stop."""

from __future__ import annotations

import threading

_lazy_torch_ready = threading.Event()
_lazy_torch_lock = threading.Lock()
_lazy_torch_thread: threading.Thread | None = None


def _import_lazy_torch() -> None:
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # the optimizer will say what is wrong, in the caller's thread
        pass
    finally:
        _lazy_torch_ready.set()


def wait_for_torch(stop: threading.Event | None = None) -> bool:
    """PyTorch imports ``torch._dynamo`` the first time an optimizer is built: 1-5 s that no stop
    event can interrupt. Import it in a background thread and wait here, checking ``stop`` every
    50 ms. Returns False when ``stop`` was set first (the import goes on in the background, and
    the next call waits for the same import)."""
    global _lazy_torch_thread
    if _lazy_torch_ready.is_set():
        return True
    with _lazy_torch_lock:
        if _lazy_torch_thread is None:
            _lazy_torch_thread = threading.Thread(target=_import_lazy_torch, name="napari-unet import", daemon=True)
            _lazy_torch_thread.start()
    while not _lazy_torch_ready.wait(0.05):
        if stop is not None and stop.is_set():
            return False
    return True


def preload() -> None:
    """Import now, in the calling thread's time, what a first training run would import on its own.

    PyTorch's first optimizer imports its compiler stack (``torch._dynamo``: about 800 modules,
    sympy included, ~2 s here), and imports hold Python's GIL. A widget calls this in its warm-up
    worker when it opens, so that cost does not fall on a run while the user paints.
    """
    from . import checkpoint  # noqa: F401  (imported lazily by train_iter)

    wait_for_torch()
