"""Model files keep what they load: the complete arguments of an older file, a save refused before it
replaces a good file with one that would not load, no infinity from float16, and no fine-tuning of a
BioImage.IO package's own network."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet.modelfile import ModelFileError, LoadedModel, load_model, make_config, read_config, save_model
from napari_unet.models import build_model


def _old_unetpp_file(path):
    """A U-Net++ file written before its ``upsample`` argument existed (it had transposed up-convolutions)."""
    torch.manual_seed(0)
    net = build_model("unet++", features=(4, 8, 16), upsample="transpose").eval()
    config = make_config(net)
    del config["arguments"]["upsample"]
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"napari_unet": json.dumps(config)})
    return net


# -- finding 1: the loaded config holds the arguments the network was built with ----------------------

def test_an_older_file_loads_with_its_complete_arguments(tmp_path):
    net = _old_unetpp_file(tmp_path / "old.safetensors")
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.config["arguments"]["upsample"] == "transpose"
    assert loaded.config["arguments"] == loaded.net.config == net.config
    # what is written from it again (a save, an export) builds the same network today
    again = load_model(save_model(tmp_path / "again", loaded.net, loaded.config))
    assert again.config["arguments"] == net.config


# -- finding 2: a save that load_model would refuse writes nothing ----------------------------------------

def _good_file(tmp_path):
    net = build_model("unet", features=(4, 8)).eval()
    return net, save_model(tmp_path / "m", net, make_config(net, provenance={"v": 1}))


@pytest.mark.parametrize("case, message", [
    ("more outputs than classes", "does not describe its network.*2 classes.*gives 3"),
    ("other input channels", "does not describe its network.*3 input channel"),
    ("another architecture", "architecture 'unet' builds a UNet, but this network is a UNetPlusPlus"),
])
def test_a_config_that_does_not_describe_the_network_is_refused_before_writing(tmp_path, case, message):
    net, path = _good_file(tmp_path)
    before = path.read_bytes()
    config = make_config(net)
    if case == "more outputs than classes":
        net.set_out_channels(3)
    elif case == "other input channels":
        config["input"]["channels"] = 3
    else:
        net = build_model("unet++", features=(4, 8))
    with pytest.raises(ValueError, match=message) as error:
        save_model(path, net, config)
    assert not isinstance(error.value, ModelFileError)  # the caller's mistake, not a damaged file
    assert "make_config(net" in str(error.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert read_config(path)["provenance"] == {"v": 1}


def test_weights_that_are_not_those_of_the_architecture_are_refused(tmp_path):
    net, path = _good_file(tmp_path)
    net.extra = torch.nn.Conv2d(1, 1, 1)  # a module the registry's network does not have
    with pytest.raises(ValueError, match="weights are not those its config builds"):
        save_model(path, net, make_config(net))


# -- finding 3: no NaN or infinity is ever written -----------------------------------------------------------

def test_half_keeps_float32_for_values_float16_cannot_hold(tmp_path):
    net = build_model("unet", features=(4, 8)).eval()
    with torch.no_grad():
        net.head.bias.fill_(1e5)  # beyond float16's 65504: would be stored as infinity
    path = save_model(tmp_path / "half", net, make_config(net), half=True)
    with safe_open(str(path), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["head.bias"] == "F32"
    assert dtypes["head.weight"] == "F16"  # the rest is still half the size
    loaded = load_model(path)
    assert torch.equal(loaded.net.head.bias, net.head.bias)


def test_weights_that_are_not_finite_are_refused_before_writing(tmp_path):
    net, path = _good_file(tmp_path)
    before = path.read_bytes()
    with torch.no_grad():
        net.head.weight[0, 0] = float("nan")
    for half in (False, True):
        with pytest.raises(ValueError, match=r"NaN or infinite values \(head.weight\)"):
            save_model(path, net, make_config(net), half=half)
    assert path.read_bytes() == before


# -- finding 6: a package's own network is refused as a base for fine-tuning ----------------------------------

def _package_model() -> LoadedModel:
    """A third-party BioImage.IO package's network as import_model gives it (its own module, frozen)."""
    from napari_unet.bioimageio import PACKAGE_ARCHITECTURE
    from napari_unet.bioimageio.package_net import PackageNet

    plan = types.SimpleNamespace(spatial=["y", "x"], in_channels=1, out_channels=2, steps=[16, 16], mins=[16, 16],
                                 activation="softmax", pre_ops=[], in_axes=["batch", "channel", "space:y", "space:x"],
                                 out_axes=["batch", "channel", "space:y", "space:x"])
    net = PackageNet(torch.nn.Conv2d(1, 2, 3, padding=1), plan).eval()
    config = {"format": "napari-unet", "format_version": 1, "architecture": PACKAGE_ARCHITECTURE, "arguments": {},
              "input": {"channels": 1, "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}},
              "output": {"target": "binary", "classes": ["background", "foreground"]},
              "provenance": {}, "card": "", "bioimageio": {"name": "foreign", "weights": "torchscript"}}
    return LoadedModel(net=net, config=config, name="foreign")


def test_a_package_network_is_refused_as_a_fine_tuning_base(tmp_path, one_thread):
    from napari_unet.finetune import FinetuneSettings, finetune_iter
    from napari_unet.synthetic import fluorescent_nuclei

    image, labels = fluorescent_nuclei((128, 128), 12, seed=0)
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1,
                                device="cpu", augment=False)
    triples = [(np.asarray(image), np.asarray(labels), None)] * 2
    with pytest.raises(ValueError, match="a BioImage.IO package's own network cannot be fine-tuned here; "):
        next(finetune_iter(_package_model(), triples, settings, out_dir=tmp_path / "out", name="ft"))
    assert not (tmp_path / "out").exists()  # refused before anything was made
