"""Residual U-Net, Mobile U-Net and Eff-UNet through the family contract: shapes, gradients,
model files, the tiled predictor, training, and the messages for bad configurations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from napari_unet.inference.predictor import Predictor, fuse_batchnorm, predict, run_to_end
from napari_unet.modelfile import METADATA_KEY, ModelFileError, load_model, make_config, save_model
from napari_unet.models import build_model, get_spec
from napari_unet.models.eff_unet import EffUNet
from napari_unet.models.encoders import ResidualUnit
from napari_unet.models.mobile_unet import MobileUNet
from napari_unet.models.resunet import ResUNet
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.training import train_iter

VARIANTS = ["resunet", "mobile-unet", "eff-unet"]
# tiny versions: two downsamplings (size_divisor 4); no drop-connect so every gradient is deterministic
TINY = {
    "resunet": dict(features=(8, 16, 32)),
    "mobile-unet": dict(features=(8, 8, 16), width_multiplier=0.25),
    "eff-unet": dict(features=(8, 8, 16), width_coefficient=0.25, depth_coefficient=0.5, drop_connect_rate=0.0),
}
BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def tiny(name, **overrides):
    torch.manual_seed(0)
    return build_model(name, **{**TINY[name], **overrides})


def randomize_norms(net):
    """Non-trivial batch-norm statistics and affine parameters, so that folding them is exercised."""
    for m in net.modules():
        if isinstance(m, BATCH_NORMS):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def outputs(net, x, deep_supervision):
    out = net(x, side_outputs=deep_supervision)
    return out if deep_supervision else [out]


# -- registry and defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("resunet", ResUNet), ("mobile-unet", MobileUNet), ("eff-unet", EffUNet)])
def test_registry_defaults_rebuild_from_their_config(name, cls):
    spec = get_spec(name)
    assert not spec.deep_supervision and spec.spatial_dims == 2 and spec.reference
    net = build_model(name)
    assert type(net) is cls and net.architecture == name and net.margin == 0
    # the backbones keep their total stride 32; the ResUNet has the U-Net's 4 downsamplings
    assert net.size_divisor == ((16, 16) if name == "resunet" else (32, 32))
    # interactive CPU sizes (Eff-UNet: EfficientNet-B0's 3.6 M encoder and a small decoder)
    assert 0.3e6 < net.n_parameters < 4.5e6
    config = json.loads(json.dumps(net.config))  # JSON-serialisable
    assert config["features"][0] == net.config["features"][0] > 0
    twin = cls(**config)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def multiply_adds_per_pixel(net, shape=(64, 64)):
    """Multiply-accumulates of every convolution per input pixel (a 2D network in eval mode)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels // module.groups * kernel
        else:
            total += output.numel() * module.in_channels // module.groups * kernel

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, net.in_channels, *shape))
    for h in hooks:
        h.remove()
    return total / math.prod(shape)


def test_mobile_unet_is_the_cheap_one():
    cost = {name: multiply_adds_per_pixel(build_model(name)) for name in ["unet", *VARIANTS]}
    # the plain U-Net: 46 k multiply-adds per pixel; the Mobile U-Net about 3 k
    assert 45e3 < cost["unet"] < 47e3
    assert cost["mobile-unet"] < 0.1 * cost["unet"]
    assert max(cost["resunet"], cost["eff-unet"]) < cost["unet"]


# -- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(36, 20), (12, 44)])  # odd multiples of 4, not square
def test_full_resolution_output_and_side_output_list(name, size):
    net = tiny(name, in_channels=2, out_channels=3).eval()
    assert net.size_divisor == (4, 4) and net.output_shape(size) == size
    x = torch.randn(2, 2, *size)
    y = net(x)
    assert y.shape == (2, 3, *size)
    side = net(x, side_outputs=True)
    assert isinstance(side, list) and len(side) == 1 and torch.equal(side[0], y)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("norm", ["none", "group", "instance"])
def test_other_norms(name, norm):
    net = tiny(name, norm=norm).train()
    net(torch.randn(2, 1, 16, 12)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert not any(isinstance(m, BATCH_NORMS) for m in net.modules())


@pytest.mark.parametrize("name", VARIANTS)
def test_3d_on_a_tiny_volume(name):
    # four downsamplings of a 16^3 volume: the bottom is 1x1x1
    net = build_model(name, spatial_dims=3, features=(4, 8, 8, 16, 16))
    assert net.size_divisor == (16, 16, 16)
    net.train()
    y = net(torch.randn(2, 1, 16, 16, 16), side_outputs=True)
    assert len(y) == 1 and y[0].shape == (2, 2, 16, 16, 16)
    y[0].square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    # non-cubic, odd multiples of 4 with a shallower 3D network
    shallow = tiny(name, spatial_dims=3).eval()
    assert shallow(torch.randn(1, 1, 12, 4, 20)).shape == (1, 2, 12, 4, 20)


def test_eff_unet_drop_connect_only_while_training():
    x = torch.randn(2, 1, 16, 16)
    for rate, differ in [(0.0, False), (0.5, True)]:
        net = tiny("eff-unet", features=(8, 8, 8, 8), depth_coefficient=1.0, drop_connect_rate=rate).train()
        torch.manual_seed(1)
        with torch.no_grad():
            first, second = net(x), net(x)  # batch-norm statistics are the same; only dropping differs
        assert (not torch.equal(first, second)) == differ
        net.eval()
        assert torch.equal(net(x), net(x))


# -- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("deep_supervision", [True, False], ids=["ds", "no-ds"])
def test_gradients_reach_every_parameter(name, dims, deep_supervision):
    net = tiny(name, spatial_dims=dims).train()
    x = torch.randn(2, 1, *((8, 12, 16) if dims == 3 else (32, 48)))
    loss = sum(out.square().mean() for out in outputs(net, x, deep_supervision))
    loss.backward()
    # no side heads: with supervision off there is no parameter left out
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


# -- model files, the predictor -------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dims", [2, 3])
def test_model_file_round_trip(name, dims, tmp_path):
    net = randomize_norms(tiny(name, spatial_dims=dims, out_channels=3)).eval()
    path = save_model(tmp_path / name, net, make_config(net, target="boundary"))
    loaded = load_model(path)
    assert type(loaded.net) is type(net) and loaded.net.config == net.config
    assert loaded.net.architecture == name and not loaded.net.training
    x = torch.randn(1, 1, *((8, 12, 16) if dims == 3 else (20, 28)))
    with torch.no_grad():
        # saved without side outputs in mind; loaded with supervision switched on
        mine, theirs = net(x), loaded.net(x, side_outputs=True)
    assert isinstance(theirs, list) and len(theirs) == 1
    assert torch.equal(mine, theirs[0])


@pytest.mark.parametrize("name", VARIANTS)
def test_batchnorm_folding_in_the_predictor(name):
    net = randomize_norms(tiny(name)).eval()
    fused = fuse_batchnorm(net)
    x = torch.randn(1, 1, 24, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), net(x), atol=1e-4)
    left = sum(isinstance(m, BATCH_NORMS) for m in fused.modules())
    if name == "resunet":
        # one per pre-activation unit: the input norm of every unit but the first
        units = sum(isinstance(m, ResidualUnit) for m in net.modules())
        assert units == 3 + 2 and left == units - 1
    else:
        assert left == 0


@pytest.mark.parametrize("name, overrides", [("resunet", {}), ("mobile-unet", {}), ("eff-unet", {"se_ratio": 0.0}),
                                             ("eff-unet", {})], ids=["resunet", "mobile", "eff-no-se", "eff"])
def test_tiled_prediction_of_a_200x300_image(name, overrides, tmp_path):
    net = randomize_norms(tiny(name, **overrides)).eval()
    model = load_model(save_model(tmp_path / "m", net, make_config(net)))
    image = fluorescent_nuclei((200, 300), 20, seed=2)[0]
    untiled = predict(model, image, predictor=Predictor(model, device="cpu", tile_size=512))
    assert untiled.probabilities.shape[-2:] == (200, 300)
    assert np.isfinite(untiled.probabilities).all()
    assert 0 <= untiled.probabilities.min() and untiled.probabilities.max() <= 1
    tiled = predict(model, image, predictor=Predictor(model, device="cpu", tile_size=96))
    difference = np.abs(tiled.probabilities - untiled.probabilities).max()
    if name == "eff-unet" and overrides.get("se_ratio", 0.25) > 0:
        # squeeze-and-excitation averages over the whole tile: close, but not exact by design
        assert difference < 0.05
    else:
        # the default halo covers these tiny networks' receptive fields: exact up to blending
        assert difference < 1e-3


@pytest.mark.parametrize("name", VARIANTS)
def test_3d_prediction_of_a_small_volume(name, tmp_path):
    net = randomize_norms(tiny(name, spatial_dims=3)).eval()
    model = load_model(save_model(tmp_path / "m3", net, make_config(net)))
    volume = np.random.default_rng(0).random((10, 30, 38), dtype=np.float32)
    out = predict(model, volume, device="cpu")
    assert out.spatial_dims == 3 and out.probabilities.shape[-3:] == (10, 30, 38)
    assert np.isfinite(out.probabilities).all() and out.probabilities.std() > 0


# -- heads, inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_set_out_channels_replaces_only_the_head(name):
    net = tiny(name)
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    net.set_out_channels(3)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.out_channels == net.config["out_channels"] == 3 and after["head.weight"].shape[0] == 3
    assert net.eval()(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    rebuilt = type(net)(**net.config)
    rebuilt.load_state_dict(after)  # the config describes the changed network
    with pytest.raises(ValueError, match="at least 1"):
        net.set_out_channels(0)


@pytest.mark.parametrize("name", VARIANTS)
def test_rgb_input(name):
    net = tiny(name, in_channels=3).eval()
    assert net(torch.randn(1, 3, 16, 24)).shape == (1, 2, 16, 24)
    with pytest.raises(ValueError, match=r"Expected input \(B, 3"):
        net(torch.randn(1, 1, 16, 24))


# -- training -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nuclei_pairs():
    return [fluorescent_nuclei((128, 128), 30, seed=s) for s in range(3)]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("deep_supervision", [True, False], ids=["ds", "no-ds"])
def test_short_training_run_lowers_the_loss(name, deep_supervision, nuclei_pairs):
    net = tiny(name)
    events = []
    result = run_to_end(train_iter(net, nuclei_pairs, patch_size=64, batch_size=4, lr=3e-3, epochs=2,
                                   steps_per_epoch=10, seed=0, device="cpu", warmup_steps=3,
                                   deep_supervision=deep_supervision), events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert result.steps == 20 and result.stopped == "finished"
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


# -- bad configurations ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_bad_configurations_say_what_to_change(name):
    with pytest.raises(ValueError, match="at least 2 positive channel counts"):
        build_model(name, features=(8,))
    with pytest.raises(ValueError, match="at least 2 positive channel counts"):
        build_model(name, features=(8, 0, 16))
    with pytest.raises(ValueError, match="list of channel counts"):
        build_model(name, features=("a", "b"))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build_model(name, spatial_dims=1)
    with pytest.raises(ValueError, match="in_channels and out_channels"):
        build_model(name, in_channels=0)
    with pytest.raises(ValueError, match="Unknown norm 'layer'"):
        build_model(name, norm="layer")
    with pytest.raises(ValueError, match="Bad arguments"):
        build_model(name, padding="valid")  # all three are "same"-padding networks


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="at most 5 downsamplings"):
        build_model("mobile-unet", features=(8, 8, 8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="at most 5 downsamplings"):
        build_model("eff-unet", features=(8,) * 7)
    with pytest.raises(ValueError, match="width_multiplier must be positive"):
        build_model("mobile-unet", width_multiplier=0)
    with pytest.raises(ValueError, match="width_coefficient and depth_coefficient"):
        build_model("eff-unet", depth_coefficient=-1.0)
    with pytest.raises(ValueError, match="se_ratio"):
        build_model("eff-unet", se_ratio=1.5)
    with pytest.raises(ValueError, match="drop_connect_rate"):
        build_model("eff-unet", drop_connect_rate=1.0)
    with pytest.raises(ValueError, match="Unknown upsample 'bicubic'"):
        build_model("resunet", upsample="bicubic")


@pytest.mark.parametrize("name", VARIANTS)
def test_input_too_small_for_the_depth(name, nuclei_pairs):
    net = build_model(name, features=(8, 8, 8, 8, 8), **({"width_multiplier": 0.25} if name == "mobile-unet" else {}))
    assert net.size_divisor == (16, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        net.output_shape((24, 32))
    assert net.valid_input_shape((24, 33)) == (32, 48)
    with pytest.raises(ValueError, match="not a multiple of"):
        net(torch.randn(1, 1, 24, 32))
    with pytest.raises(ValueError, match="patch_size must be a multiple of 16"):
        next(train_iter(net, nuclei_pairs, patch_size=24, epochs=1))


@pytest.mark.parametrize("name", VARIANTS)
def test_weights_that_do_not_fit_the_config_are_refused(name, tmp_path):
    net = tiny(name)
    config = make_config(net)
    path = save_model(tmp_path / "ok", net, config)
    # a file whose config says 3 input channels over weights for 1
    wrong = dict(config, arguments=dict(config["arguments"], in_channels=3), input=dict(config["input"], channels=3))
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={METADATA_KEY: json.dumps(wrong)})
    with pytest.raises(ModelFileError, match="weights do not match the architecture"):
        load_model(bad)
    assert load_model(path).net.in_channels == 1
