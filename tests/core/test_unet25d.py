"""The two 2.5D U-Nets (slice stack and projection-based): shapes, gradients, their geometry, model
files, the tiled 3D predictor and short 3D training runs (no Qt; CPU, tiny widths)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_unet.inference.predictor import Predictor, predict, run_to_end
from napari_unet.modelfile import ModelFileError, load_model, make_config, save_model
from napari_unet.models import build_model, get_spec
from napari_unet.models.unet25d import UNet25DProjection, UNet25DStack, box_mean3, reflect_index
from napari_unet.synthetic import nuclei_3d
from napari_unet.training import train_iter

NAMES = ["unet-2.5d-stack", "unet-2.5d"]
TINY = dict(features=(4, 8, 16))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def _randomise_batch_norm(net):
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


# -- both modes -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_registry_entries_and_defaults(name):
    spec = get_spec(name)
    assert spec.spatial_dims == 3 and not spec.deep_supervision and spec.reference
    net = build_model(name)
    assert net.spatial_dims == 3 and net.margin == 0 and net.architecture == name
    assert net.config["features"][0] == 16 and 0.3e6 < net.n_parameters < 0.7e6  # four levels: the bundle stays < 25 MB
    json.dumps(net.config)
    assert type(net)(**net.config).config == net.config


@pytest.mark.parametrize("deep_supervision", [False, True], ids=["plain", "side-outputs"])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_side_outputs_and_gradients_reach_every_parameter(name, deep_supervision):
    torch.manual_seed(0)
    extra = {"train_directions": 1.0} if name == "unet-2.5d" else {}
    net = build_model(name, **TINY, in_channels=2, out_channels=3, **extra).train()
    shape = (7, 12, 20) if name == "unet-2.5d-stack" else (7, 13, 22)  # the projection net takes any size
    assert net.is_valid_input_shape(shape)
    x = torch.randn(2, 2, *shape)
    out = net(x, side_outputs=deep_supervision)
    if deep_supervision:
        assert isinstance(out, list) and len(out) == 1
        out = out[0]
    assert out.shape == (2, 3, *shape)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_roundtrip_set_out_channels_and_in_channels(tmp_path, name):
    torch.manual_seed(0)
    net = build_model(name, **TINY, in_channels=3)
    _randomise_batch_norm(net)
    net.eval()
    x = torch.randn(1, 3, 5, 16, 12)
    loaded = load_model(save_model(tmp_path / name, net, make_config(net)))
    assert loaded.net.config == net.config and type(loaded.net) is type(net)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.net(x, side_outputs=True)[0], net(x), rtol=0, atol=0)
    net.set_out_channels(3)
    assert net.out_channels == net.config["out_channels"] == 3 and net(x).shape == (1, 3, 5, 16, 12)
    reloaded = load_model(save_model(tmp_path / f"{name}-3", net, make_config(net, target="boundary")))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.net(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_weights_for_other_input_channels_are_refused(tmp_path, name):
    net3 = build_model(name, **TINY, in_channels=3)
    config = make_config(build_model(name, **TINY, in_channels=1))
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in net3.state_dict().items()}, str(path),
              metadata={"napari_unet": json.dumps(config)})
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)


@pytest.mark.parametrize("name", NAMES)
def test_bad_configurations_say_what_to_change(name):
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        build_model(name, spatial_dims=2)
    with pytest.raises(ValueError, match="features"):
        build_model(name, features=(8,))
    with pytest.raises(ValueError, match=r"Expected a volume batch \(B, 1, D, H, W\)"):
        build_model(name, **TINY)(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("name", NAMES)
def test_predictor_on_a_volume_larger_than_one_tile(tmp_path, name):
    torch.manual_seed(0)
    net = build_model(name, **TINY)
    _randomise_batch_norm(net)
    model = load_model(save_model(tmp_path / name, net.eval(), make_config(net)))
    volume = np.random.default_rng(1).random((9, 72, 60), dtype=np.float32)
    predictor = Predictor(model, device="cpu", tile_size=48, halo=16, blend=4)  # channels-last 2D weights inside
    assert predictor.plan(volume.shape).n_tiles > 1
    out = predict(model, volume, predictor=predictor)
    assert out.probabilities.shape == (1, 9, 72, 60) and np.isfinite(out.probabilities).all()
    assert 0.0 <= out.probabilities.min() and out.probabilities.max() <= 1.0
    # one tile: the predictor's output is the network's softmax on the normalised volume
    whole = predict(model, volume, predictor=Predictor(model, device="cpu", tile_size=512, halo=0, blend=0))
    low, high = np.percentile(volume, 1.0), np.percentile(volume, 99.8)
    x = torch.from_numpy((volume - low) / (high - low))
    with torch.no_grad():
        expected = torch.softmax(net(x[None, None].float()), 1)[0, 1:].numpy()
    assert np.abs(whole.probabilities - expected).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_short_3d_training_run_lowers_the_loss(name):
    pairs = [nuclei_3d((16, 48, 48), 8, seed=s) for s in range(2)]
    torch.manual_seed(0)
    net = build_model(name, features=(8, 16, 32))
    events = []
    lr = 2e-2 if name == "unet-2.5d" else 1e-2  # random direction subsets make its loss noisier
    result = run_to_end(train_iter(net, pairs, patch_size=(8, 32, 32), batch_size=2, lr=lr, epochs=1,
                                   steps_per_epoch=30, seed=0, device="cpu", warmup_steps=3), events.append)
    losses = [e.loss for e in events]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert result.stopped == "finished"


# -- slice stack ------------------------------------------------------------------------------

def test_reflect_index_mirrors_like_numpy():
    for length in (1, 2, 3, 7):
        idx = reflect_index(length, 3).numpy()
        expected = np.stack([np.pad(np.arange(length), 3, mode="reflect" if length > 1 else "edge")[z:z + 7]
                             for z in range(length)]) if length > 3 else None
        assert idx.shape == (length, 7) and idx.min() >= 0 and idx.max() < length
        assert (idx[:, 3] == np.arange(length)).all()  # the centre is the slice itself
        if expected is not None:
            np.testing.assert_array_equal(idx, expected)


def test_stack_predicts_each_slice_from_its_k_neighbours():
    torch.manual_seed(0)
    net = UNet25DStack(features=(4, 8), slices=5).eval()
    assert net.size_divisor == (1, 2, 2) and net.receptive_radius[0] == 2
    x = torch.randn(1, 1, 9, 8, 12, requires_grad=True)
    net(x)[0, 1, 4].sum().backward()
    touched = x.grad[0, 0].abs().sum(dim=(1, 2)) > 0
    assert touched.tolist() == [False, False, True, True, True, True, True, False, False]
    # slice 0 sees slices 2, 1, 0, 1, 2 (mirrored) as its five channels, in that order
    with torch.no_grad():
        channels = x[0, 0, [2, 1, 0, 1, 2]][None]
        torch.testing.assert_close(net(x)[:, :, 0], net.unet(channels), rtol=1e-5, atol=1e-6)


def test_one_slice_stack_is_the_2d_unet_slice_by_slice():
    torch.manual_seed(0)
    net = UNet25DStack(features=(4, 8), slices=1, in_channels=2).eval()
    x = torch.randn(2, 2, 3, 8, 8)
    with torch.no_grad():
        expected = torch.stack([net.unet(x[:, :, z]) for z in range(3)], dim=2)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        UNet25DStack(slices=4)


def test_stack_tiles_equal_the_untiled_pass(tmp_path):
    torch.manual_seed(0)
    net = UNet25DStack(features=(4, 8), slices=3)
    net.architecture = "unet-2.5d-stack"
    _randomise_batch_norm(net)
    model = load_model(save_model(tmp_path / "stack", net.eval(), make_config(net)))
    halo = max(net.receptive_radius) + 8 + 1
    volume = np.random.default_rng(0).normal(size=(80, 40, 36)).astype(np.float32)
    untiled = predict(model, volume, predictor=Predictor(model, device="cpu", tile_size=512, halo=halo, blend=8))
    tiled_predictor = Predictor(model, device="cpu", tile_size=2 * halo + 16, halo=halo, blend=8)
    plan = tiled_predictor.plan(volume.shape)
    assert all(ax.n >= 2 for ax in plan.axes)
    assert plan.axes[0].context < plan.axes[1].context  # z: the stack sees only slices // 2 planes
    tiled = predict(model, volume, predictor=tiled_predictor)
    assert np.abs(tiled.probabilities - untiled.probabilities).max() < 1e-4


# -- projection-based -------------------------------------------------------------------------

def test_projection_directions_and_their_maximum_intensity_projections():
    net = UNet25DProjection(features=(4, 8), directions=5)
    assert net.angles == [0.0, 45.0, 90.0, 135.0] and len(net.filters) == 5
    x = torch.rand(1, 2, 6, 10, 14)
    torch.testing.assert_close(net._project(x, 0), x.amax(dim=2))  # along z: (H, W)
    torch.testing.assert_close(net._project(x, 1), x.amax(dim=3))  # along y: (D, W)
    torch.testing.assert_close(net._project(x, 3), x.amax(dim=4))  # along x (90 degrees): (D, H)
    diagonal = net._project(x, 2)
    # the rotated frame holds the whole turned rectangle: (14 - 1) cos 45 + (10 - 1) sin 45 + 1 -> 17
    assert diagonal.shape == (1, 2, 6, net._extent(10, 14, 45.0)[1]) == (1, 2, 6, 17)
    # a MIP never exceeds the volume's maximum nor falls under its minimum, per channel and slice
    assert (diagonal <= x.amax(dim=(3, 4))[..., None] + 1e-6).all()
    assert (diagonal >= x.amin(dim=(2, 3, 4))[:, :, None, None] - 1e-6).all()
    # a constant volume projects to the constant, also on the rotated frame (no zero padding)
    assert torch.allclose(net._project(torch.full((1, 1, 3, 9, 7), -0.25), 4), torch.tensor(-0.25))


def test_back_projection_smears_along_the_direction_through_the_object():
    net = UNet25DProjection(features=(4, 8), directions=5)
    x = torch.zeros(1, 1, 4, 21, 25)
    x[0, 0, 1, 8:11, 15:18] = 1.0  # a small block centred at (z, y, x) = (1, 9, 16)
    for j, angle in enumerate([None, 0.0, 45.0, 90.0, 135.0]):
        back = net._back_project(net._project(x, j), j, (4, 21, 25))[0, 0]
        assert back.shape == (4, 21, 25)
        assert back[1, 9, 16] >= 0.95 * back.max(), angle  # the ray through the block is brightest
        if angle is not None:
            assert back[2].abs().max() < 1e-6  # projections along y stay in their slice
            theta = math.radians(angle)
            # the smear is constant along the ray direction (dy, dx) = (cos, -sin): walk 4 px along it
            y, xx = 9 + 4 * math.cos(theta), 16 - 4 * math.sin(theta)
            assert back[1, round(y), round(xx)] >= 0.9 * back[1, 9, 16], angle
        else:
            assert torch.allclose(back[0], back[1])  # the z projection is the same in every slice


def test_projection_logits_contract_and_fine_tuning_operator():
    torch.manual_seed(0)
    net = UNet25DProjection(features=(4, 8)).eval()
    x = torch.randn(2, 1, 5, 12, 10)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2, 2, 5, 12, 10)
    torch.testing.assert_close(logits[:, 0], -logits[:, 1])  # [-z/2, z/2]
    z = logits[:, 1] * 2
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], torch.sigmoid(z))
    # the normalisation is the affine map after the pooling
    with torch.no_grad():
        net.scale.fill_(2.0)
        net.shift.fill_(0.5)
        torch.testing.assert_close(net(x)[:, 1] * 2, 2.0 * z + 0.5, rtol=1e-5, atol=1e-5)
    single = UNet25DProjection(features=(4, 8), out_channels=1)
    single.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(single.eval()(x)[:, 0], net(x)[:, 1] * 2)  # K = 1: z itself (sigmoid)
    v = torch.randn(1, 1, 3, 4, 5)
    ref = torch.nn.functional.avg_pool3d(v, 3, stride=1, padding=1, count_include_pad=False)
    torch.testing.assert_close(box_mean3(v), ref)
    assert box_mean3(torch.ones(1, 1, 1, 2, 1)).allclose(torch.ones(1, 1, 1, 2, 1))  # axes shorter than 3


def test_random_direction_subsets_in_training_all_in_eval():
    torch.manual_seed(0)
    net = UNet25DProjection(features=(4, 8), directions=5, train_directions=2)
    assert net.train_count == 2
    assert UNet25DProjection(features=(4, 8), directions=5, train_directions=0.6).train_count == 3
    assert UNet25DProjection(features=(4, 8), directions=7, train_directions=1.0).train_count == 7
    net.train()
    draws = [tuple(net.chosen_directions()) for _ in range(40)]
    assert all(len(d) == 2 and len(set(d)) == 2 for d in draws) and len(set(draws)) > 4
    assert set(sum(draws, ())) == set(range(5))
    net.eval()
    assert net.chosen_directions() == [0, 1, 2, 3, 4]
    # in training only the chosen directions' filters learn
    net.train()
    x = torch.randn(1, 1, 4, 8, 8)
    torch.manual_seed(3)
    expected = net.chosen_directions()
    torch.manual_seed(3)
    net(x).square().mean().backward()
    learned = [j for j, f in enumerate(net.filters) if f.weight.grad is not None and f.weight.grad.abs().sum() > 0]
    assert learned == expected
    for bad in (0, 6, 0.0, 1.5, True, "all"):
        with pytest.raises(ValueError, match="train_directions"):
            UNet25DProjection(directions=5, train_directions=bad)
    with pytest.raises(ValueError, match="directions must be an integer >= 3"):
        UNet25DProjection(directions=2)
    with pytest.raises(ValueError, match="filter_size"):
        UNet25DProjection(filter_size=2)


def test_projection_filters_start_as_the_identity_and_set_out_channels_rebuilds_them():
    net = UNet25DProjection(features=(4, 8), filter_size=3)
    m = torch.randn(2, 1, 6, 9)
    for f in net.filters:
        torch.testing.assert_close(f(m), m)
    net.set_out_channels(1)  # same foreground probability sigmoid(z): nothing to rebuild
    assert net.scale.numel() == 1 and net.config["out_channels"] == 1
    net.set_out_channels(3)
    assert net.unet.out_channels == 3 and net.scale.numel() == 3 and net.filters[0].weight.shape[:2] == (3, 3)
    assert net(torch.randn(1, 1, 3, 8, 8)).shape == (1, 3, 3, 8, 8)
