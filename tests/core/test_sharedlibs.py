"""PyTorch's shared libraries loaded before ``import torch`` (with the GIL released)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="dlopen is POSIX's")
def test_torch_imports_and_runs_after_its_libraries_are_preloaded():
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
