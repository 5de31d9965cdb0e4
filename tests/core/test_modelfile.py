"""Model files: safetensors + JSON config, atomic writes, pickles refused."""

import json
import os
import struct

import numpy as np
import pytest
import torch

from napari_unet.modelfile import (ModelFileError, known_models, load_model, make_config, read_config,
                                   save_model, user_model_dir)
from napari_unet.models import build_model


def _net():
    torch.manual_seed(1)
    return build_model("unet", features=(4, 8))


def test_round_trip_gives_the_same_outputs(tmp_path):
    net = _net().eval()
    path = save_model(tmp_path / "m", net, make_config(net, "unet", provenance={"data": "test"}))
    assert path.name == "m.safetensors"
    loaded = load_model(path)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.net(x))
    assert loaded.config["provenance"]["data"] == "test"
    assert loaded.target == "binary" and loaded.classes == ["background", "foreground"]
    assert not loaded.net.training


def test_half_precision_storage(tmp_path):
    net = build_model("unet", features=(16, 32)).eval()
    full = save_model(tmp_path / "full", net, make_config(net, "unet"))
    half = save_model(tmp_path / "half", net, make_config(net, "unet"), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert next(loaded.net.parameters()).dtype == torch.float32
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), loaded.net(x), atol=1e-2)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    net = _net()
    path = save_model(tmp_path / "m", net, make_config(net, "unet", provenance={"v": 1}))
    import napari_unet.modelfile as mf

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(mf, "save_file", boom)
    with pytest.raises(OSError):
        save_model(path, net, make_config(net, "unet", provenance={"v": 2}))
    assert read_config(path)["provenance"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_pickled_checkpoints_are_refused_with_a_way_out(tmp_path):
    net = _net()
    zipped = tmp_path / "model.pt"
    torch.save(net.state_dict(), zipped)
    with pytest.raises(ModelFileError, match="never unpickles.*save_model"):
        load_model(zipped)
    legacy = tmp_path / "model.pkl"
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(legacy)


@pytest.mark.parametrize("content,match", [
    (b"", "empty or truncated"),
    (b"\x89HDF\r\n\x1a\n" + b"0" * 32, "HDF5"),
    (b"hello world, not a model at all", "not a safetensors file"),
])
def test_foreign_and_corrupt_files(tmp_path, content, match):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_truncated_and_foreign_safetensors(tmp_path):
    net = _net()
    path = save_model(tmp_path / "m", net, make_config(net, "unet"))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(cut)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelFileError, match="another tool"):
        load_model(foreign)


def _rewrite_config(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    config = json.loads(header["__metadata__"]["napari_unet"])
    change(config)
    header["__metadata__"]["napari_unet"] = json.dumps(config)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(architecture="unet9"), "available models"),
    (lambda c: c.update(format_version=99), "format_version"),
    (lambda c: c["output"].update(target="blobs"), "output.target"),
    (lambda c: c["arguments"].update(features=[4, 8, 16]), "do not build a network"),
    (lambda c: c["arguments"].update(features=[4, 16]), "weights do not match"),
    (lambda c: c["input"].update(channels=0), "input.channels"),
    (lambda c: c["output"].update(target="boundary", classes=["background", "interior", "boundary"]),
     "does not describe its network.*3 classes"),
    (lambda c: c["input"].update(channels=3), "does not describe its network.*3 input"),
])
def test_invalid_configs_are_explained(tmp_path, change, match):
    net = _net()
    path = save_model(tmp_path / "m", net, make_config(net, "unet"))
    _rewrite_config(path, change)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_a_config_whose_target_does_not_fit_the_network_is_not_written():
    with pytest.raises(ValueError, match="3 classes .* 2 output channels: build it with out_channels=3"):
        make_config(_net(), "unet", target="boundary")


def test_names_resolve_to_user_models(tmp_path):
    net = _net()
    save_model(user_model_dir() / "mine", net, make_config(net, "unet"))
    assert "mine" in known_models()
    assert load_model("mine").name == "mine"
    with pytest.raises(ModelFileError, match="neither a bundled model"):
        load_model("no-such-model")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)
