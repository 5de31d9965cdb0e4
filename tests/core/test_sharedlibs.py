"""PyTorch's shared libraries loaded before ``import torch`` (with the GIL released)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="dlopen is POSIX's")
def test_torch_imports_and_runs_after_its_libraries_are_preloaded():
    import importlib.util
    from pathlib import Path

    if not list((Path(importlib.util.find_spec("torch").origin).parent / "lib").glob("libtorch_cpu.*")):
        pytest.skip("this PyTorch keeps its libraries outside torch/lib (nothing to preload)")
    code = ("import json\n"
            "from napari_unet.sharedlibs import preload_torch\n"
            "loaded = preload_torch()\n"
            "import torch\n"
            "x = torch.arange(6.0).reshape(2, 3)\n"
            "print(json.dumps([loaded, float((x @ x.T).sum()), preload_torch()]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, total, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(name.startswith("libtorch_cpu.") for name in loaded), loaded
    assert total == 83.0  # PyTorch computes
    assert again == []  # once torch is imported there is nothing to preload


def test_nothing_is_preloaded_without_torch(monkeypatch):
    from napari_unet import sharedlibs

    monkeypatch.setattr(sharedlibs.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert sharedlibs.torch_library_paths() == [] and sharedlibs.preload_torch() == []


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="dlopen is POSIX's")
def test_dlopen_is_called_without_the_gil():
    """A ``CDLL`` foreign function releases the GIL during the call; a ``PyDLL`` one (or
    ``ctypes.CDLL(path)``) would keep it, and the viewer would wait again."""
    import ctypes

    from napari_unet.sharedlibs import _dlopen

    dlopen = _dlopen()
    assert dlopen is not None and not dlopen._flags_ & ctypes._FUNCFLAG_PYTHONAPI


def test_a_gpu_build_preloads_only_the_cpu_libraries(tmp_path, monkeypatch):
    """PyTorch loads the CUDA libraries itself, in its own order: with them present, only libc10
    and libtorch_cpu are opened early (libtorch would pull libtorch_cuda in)."""
    from types import SimpleNamespace

    from napari_unet import sharedlibs

    lib = tmp_path / "torch" / "lib"
    lib.mkdir(parents=True)
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    for name in ("libc10", "libtorch_cpu", "libtorch", "libtorch_python", "libtorch_cuda"):
        (lib / f"{name}{suffix}").write_bytes(b"")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sharedlibs.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(origin=str(tmp_path / "torch" / "__init__.py")))
    assert [p.stem for p in sharedlibs.torch_library_paths()] == ["libc10", "libtorch_cpu"]
    (lib / f"libtorch_cuda{suffix}").unlink()
    assert [p.stem for p in sharedlibs.torch_library_paths()] == ["libc10", "libtorch_cpu", "libtorch"]
