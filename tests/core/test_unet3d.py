"""The 3D U-Net (Çiçek et al. 2016) as registered: anisotropic pooling, shapes, gradients, model
files, the tiled 3D predictor and a short 3D training run (no Qt; CPU, tiny widths)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_unet.inference.predictor import Predictor, predict, run_to_end
from napari_unet.modelfile import ModelFileError, load_model, make_config, save_model
from napari_unet.models import UNet, build_model, get_spec
from napari_unet.synthetic import nuclei_3d
from napari_unet.training import train_iter

TINY = dict(features=(4, 8, 16), strides=[(1, 2, 2), (2, 2, 2)])  # divisor (2, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def test_registry_defaults_pool_z_once_less_than_xy():
    spec = get_spec("unet-3d")
    assert spec.spatial_dims == 3 and not spec.deep_supervision and spec.builder is UNet
    net = build_model("unet-3d")
    assert net.architecture == "unet-3d" and net.spatial_dims == 3
    # 2:1:1 voxels -> the first pooling halves only y, x; then all three axes
    assert net.strides == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert net.size_divisor == (4, 8, 8)
    assert net.config["features"] == [12, 24, 48, 96] and net.config["strides"][0] == [1, 2, 2]
    assert 0.5e6 < net.n_parameters < 1.5e6
    rz, ry, rx = net.receptive_radius
    assert ry == rx and rz < ry  # less context along the thick z axis, in voxels
    json.dumps(net.config)  # JSON-serialisable


@pytest.mark.parametrize("deep_supervision", [False, True], ids=["plain", "side-outputs"])
@pytest.mark.parametrize("shape", [(6, 12, 20), (2, 28, 8)])
def test_shapes_side_outputs_and_gradients(shape, deep_supervision):
    torch.manual_seed(0)
    net = build_model("unet-3d", **TINY, in_channels=2, out_channels=3).train()
    x = torch.randn(2, 2, *shape)
    out = net(x, side_outputs=deep_supervision)
    if deep_supervision:
        assert isinstance(out, list) and len(out) == 1  # no deep-supervision heads: [logits]
        out = out[0]
    assert out.shape == (2, 3, *shape)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_anisotropic_pooling_keeps_z_at_the_first_level():
    net = build_model("unet-3d", **TINY).eval()
    sizes = []
    hooks = [enc.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:]))) for enc in net.encoders]
    with torch.no_grad():
        net(torch.randn(1, 1, 8, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]


def test_bad_shapes_and_configurations_say_what_to_change():
    net = build_model("unet-3d", **TINY)
    with pytest.raises(ValueError, match="multiple of 4"):
        net.output_shape((4, 30, 32))
    with pytest.raises(ValueError, match="multiple of 2"):
        net.output_shape((5, 32, 32))
    assert net.valid_input_shape((5, 30, 1)) == (6, 32, 4)
    with pytest.raises(ValueError, match="one entry per pooling"):
        build_model("unet-3d", features=(4, 8, 16))  # three default strides, two poolings
    with pytest.raises(ValueError, match="3 values"):
        build_model("unet-3d", features=(4, 8), strides=[(2, 2)])
    with pytest.raises(ValueError, match="positive"):
        build_model("unet-3d", features=(4, 0, 16), strides=TINY["strides"])


def _roundtrip(tmp_path, net, name, target="binary"):
    net.eval()
    path = save_model(tmp_path / name, net, make_config(net, target=target))
    loaded = load_model(path)
    assert loaded.net.config == net.config and loaded.spatial_dims == 3
    return loaded


def test_save_load_roundtrip_set_out_channels_and_in_channels(tmp_path):
    torch.manual_seed(0)
    net = build_model("unet-3d", **TINY, in_channels=3)
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(1, 3, 4, 16, 12)
    loaded = _roundtrip(tmp_path, net, "u3d")
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.net(x, side_outputs=True)[0], net(x), rtol=0, atol=0)
    kept = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    net.set_out_channels(3)
    assert net.config["out_channels"] == 3 and net(x).shape == (1, 3, 4, 16, 12)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in kept.items())
    reloaded = _roundtrip(tmp_path, net, "u3d-3", target="boundary")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.net(x), net(x), rtol=0, atol=0)


def test_weights_for_other_input_channels_are_refused(tmp_path):
    """A file whose config says 1 input channel but whose weights take 3."""
    net3 = build_model("unet-3d", **TINY, in_channels=3)
    one = build_model("unet-3d", **TINY, in_channels=1)
    config = make_config(one)
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in net3.state_dict().items()}, str(path),
              metadata={"napari_unet": json.dumps(config)})
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)


def test_tiled_3d_prediction_equals_untiled_when_the_halo_covers_the_receptive_field(tmp_path):
    # one 2x2x2 pooling keeps the receptive field (and so the halo every tile needs) small
    torch.manual_seed(0)
    net = build_model("unet-3d", features=(2, 4), strides=[(2, 2, 2)])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model = load_model(save_model(tmp_path / "rf3d", net.eval(), make_config(net)))
    halo = max(model.net.receptive_radius) + 8 + 1
    volume = np.random.default_rng(0).normal(size=(26, 30, 30)).astype(np.float32)
    untiled_predictor = Predictor(model, device="cpu", tile_size=512, halo=halo, blend=8)
    assert untiled_predictor.plan(volume.shape).n_tiles == 1
    untiled = predict(model, volume, predictor=untiled_predictor)
    tiled_predictor = Predictor(model, device="cpu", tile_size=2 * halo + 24, halo=halo, blend=8)
    plan = tiled_predictor.plan(volume.shape)
    assert all(ax.n >= 2 for ax in plan.axes)  # cut along z, y and x
    tiled = predict(model, volume, predictor=tiled_predictor)
    assert tiled.probabilities.shape == (1, 26, 30, 30) and tiled.spatial_dims == 3
    assert np.abs(tiled.probabilities - untiled.probabilities).max() < 1e-4
    # the predictor's own 3D defaults take this small volume whole, without a mirrored border
    auto = predict(model, volume, device="cpu")
    assert auto.tile_window == volume.shape
    whole = predict(model, volume, predictor=Predictor(model, device="cpu", tile_size=512, halo=0, blend=0))
    assert np.abs(auto.probabilities - whole.probabilities).max() < 1e-6


def test_short_3d_training_run_lowers_the_loss():
    pairs = [nuclei_3d((16, 48, 48), 8, seed=s) for s in range(2)]
    held_out = nuclei_3d((12, 32, 32), 3, seed=2)  # small: one predictor tile
    torch.manual_seed(0)
    net = build_model("unet-3d", features=(8, 16, 32), strides=[(1, 2, 2), (2, 2, 2)])
    events = []
    result = run_to_end(train_iter(net, pairs, [held_out], patch_size=(8, 32, 32), batch_size=2, lr=2e-2,
                                   epochs=1, steps_per_epoch=20, seed=0, device="cpu", warmup_steps=3,
                                   deep_supervision=True), events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert [e.step for e in events if e.validated] == [20]
    assert result.stopped == "finished" and 0.0 <= result.metrics["dice"] <= 1.0
    assert result.metrics["n_true"] == int(held_out[1].max()) > 0  # scored on the whole 3D label volume
