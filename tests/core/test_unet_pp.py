"""U-Net++ (Zhou et al. 2018): nested skips, deep supervision, accurate / fast (pruned) modes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_unet.inference.predictor import predict, run_to_end
from napari_unet.modelfile import METADATA_KEY, ModelFileError, load_model, make_config, save_model
from napari_unet.models import build_model, get_spec
from napari_unet.models.unet_pp import UNetPlusPlus
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.training import SegmentationLoss, train_iter


from _helpers import calibrate as _calibrate, randomise_batchnorm as _randomise_batchnorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def _net(**kw):
    torch.manual_seed(0)
    kw.setdefault("features", (4, 8, 16, 32))
    return _randomise_batchnorm(build_model("unet++", **kw)).eval()


# -- shapes and outputs ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [(24, 40), (40, 24), (56, 8)])  # 3 poolings: deepest maps 3x5, 5x3, 7x1
@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_and_side_outputs_deepest_column_first(size, in_channels):
    net = _net(in_channels=in_channels, out_channels=3)
    assert net.size_divisor == (8, 8) and net.depth == 3
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        y = net(x)
        side = net(x, side_outputs=True)
        row = net.top_row(x)
    assert y.shape == (2, 3, *size)
    assert isinstance(side, list) and len(side) == 3 and all(s.shape == (2, 3, *size) for s in side)
    # side outputs: head(X[0,3]), head(X[0,2]), head(X[0,1]); the first is the main output
    assert torch.equal(side[0], y)
    for k, out in zip((3, 2, 1), side):
        assert torch.allclose(out, net.heads[k - 1](row[k - 1]), atol=1e-6)
    assert not torch.allclose(side[0], side[1], atol=1e-3)  # distinct heads, distinct outputs


def test_3d_anisotropic_shapes_and_pruning():
    torch.manual_seed(0)
    net = UNetPlusPlus(spatial_dims=3, features=(4, 8, 16), strides=[(1, 2, 2), (2, 2, 2)]).eval()
    assert net.size_divisor == (2, 4, 4)
    x = torch.randn(1, 1, 6, 12, 20)
    with torch.no_grad():
        side = net(x, side_outputs=True)
        assert [s.shape for s in side] == [(1, 2, 6, 12, 20)] * 2
        assert torch.allclose(side[1], net.forward_pruned(x, 1), atol=1e-6)
    net.train()
    loss = sum(s.square().mean() for s in net(x, side_outputs=True))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_side_outputs_equal_separately_pruned_networks():
    """X[0,k] depends only on the nodes with i + j <= k: the full forward's k-th head must
    equal a forward that computes only the depth-k sub-network."""
    net = _net(features=(4, 8, 16, 32, 64))
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        full = net(x, side_outputs=True)  # [k=4, 3, 2, 1]
        for k in range(1, 5):
            pruned = net.forward_pruned(x, k)
            assert torch.allclose(full[4 - k], pruned, atol=1e-5), k
            assert [o.shape for o in net.forward_pruned(x, k, side_outputs=True)] == [(2, 2, 32, 48)] * k
            net.set_prune_depth(k)
            assert torch.equal(net(x), pruned)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(net(x, side_outputs=True), full[4 - k:]))
    assert net.config["prune_depth"] == 4


def _called_modules(net, x, **kw):
    called = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: called.append(name))
             for name, m in net.named_modules() if name.count(".") == 1]  # nodes.x1_2, ups.up0_1, heads.0, pools.1
    with torch.no_grad():
        net(x, **kw)
    for h in hooks:
        h.remove()
    return set(called)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pruned_forward_runs_only_the_subnetwork(k):
    net = _net(prune_depth=k)
    called = _called_modules(net, torch.randn(1, 1, 16, 16))
    nodes = {f"nodes.x{i}_{j}" for i in range(k + 1) for j in range(k + 1 - i)}
    ups = {f"ups.up{i}_{j}" for j in range(1, k + 1) for i in range(k + 1 - j)}
    pools = {f"pools.{i}" for i in range(k)}
    assert called == nodes | ups | pools | {f"heads.{k - 1}"}
    assert len(nodes) == (k + 1) * (k + 2) // 2
    # the deepest node is never touched below full depth
    assert ("nodes.x3_0" in called) == (k == 3)
    side = _called_modules(net, torch.randn(1, 1, 16, 16), side_outputs=True)
    assert side == nodes | ups | pools | {f"heads.{j}" for j in range(k)}


def test_accurate_mode_averages_the_heads_and_is_kept_in_the_config():
    net = _net()
    x = torch.randn(1, 1, 16, 24)
    with torch.no_grad():
        side = net(x, side_outputs=True)
        final = net(x)
        net.set_mode("accurate")
        accurate = net(x)
        net.set_prune_depth(2)
        accurate2 = net(x)
    assert torch.equal(final, side[0])
    assert torch.allclose(accurate, (side[0] + side[1] + side[2]) / 3, atol=1e-6)
    assert torch.allclose(accurate2, (side[1] + side[2]) / 2, atol=1e-6)
    assert net.config["mode"] == "accurate" and net.config["prune_depth"] == 2
    rebuilt = UNetPlusPlus(**net.config)
    assert rebuilt.mode == "accurate" and rebuilt.prune_depth == 2
    with pytest.raises(ValueError, match="final, accurate"):
        net.set_mode("fast")


# -- gradients -------------------------------------------------------------------------------

def _grads(net, outputs):
    net.zero_grad(set_to_none=True)
    target = torch.randint(0, 2, (outputs[0].shape[0],) + tuple(outputs[0].shape[2:]))
    loss = sum(SegmentationLoss()(o, target)[0] for o in outputs)
    loss.backward()
    for p in net.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    return {n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}


def test_gradients_with_and_without_deep_supervision():
    net = _net().train()
    x = torch.randn(2, 1, 16, 16)
    assert _grads(net, net(x, side_outputs=True)) == set()
    # without supervision (mode "final") only heads 0 and 1 (on X[0,1], X[0,2]) are unused
    unused = _grads(net, [net(x)])
    assert unused == {"heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"}
    net.set_mode("accurate")
    assert _grads(net, [net(x)]) == set()


# -- the engine ------------------------------------------------------------------------------

def test_save_load_round_trip_keeps_outputs_and_modes(tmp_path):
    net = _net(features=(4, 8, 16), mode="accurate", prune_depth=1)
    path = save_model(tmp_path / "pp", net, make_config(net))
    loaded = load_model(path).net
    assert isinstance(loaded, UNetPlusPlus) and loaded.mode == "accurate" and loaded.prune_depth == 1
    x = torch.randn(2, 1, 20, 12)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
        net.set_prune_depth(None)
        loaded.set_prune_depth(None)
        a, b = net(x, side_outputs=True), loaded(x, side_outputs=True)
    assert len(a) == len(b) == 2 and all(torch.equal(u, v) for u, v in zip(a, b))


def test_wrong_weights_for_the_config_are_refused(tmp_path):
    three = _net(features=(4, 8), in_channels=3)
    one = _net(features=(4, 8), in_channels=1)
    config = make_config(one)
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in three.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(config)})
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)


def test_set_out_channels_replaces_every_head_only():
    net = _net(features=(4, 8, 16))
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("heads.")}
    net.set_out_channels(3)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.config["out_channels"] == net.out_channels == 3
    with torch.no_grad():
        assert [o.shape for o in net(torch.randn(1, 1, 8, 8), side_outputs=True)] == [(1, 3, 8, 8)] * 2
    with pytest.raises(ValueError):
        net.set_out_channels(0)


def test_tiled_prediction_of_a_200_by_300_image(tmp_path):
    image = np.random.default_rng(0).random((200, 300), dtype=np.float32)
    x = torch.from_numpy(image)[None, None]
    net = _calibrate(_net(features=(4, 8, 16)), x)
    model = load_model(save_model(tmp_path / "pp", net, make_config(net, normalization={"kind": "none"})))
    out = predict(model, image, device="cpu", tile_size=128)
    assert out.probabilities.shape == (1, 200, 300)
    with torch.no_grad():
        direct = torch.softmax(net(x), dim=1)[0, 1:].numpy()  # 200 x 300 fits the divisor 4: one forward
    assert direct.std() > 0.01
    # tiles with a 32 px halo cover this network's receptive field: exact away from the image
    # border (where the predictor mirrors the image and a single forward pads zeros)
    inner = (slice(None), slice(24, -24), slice(24, -24))
    assert np.abs(out.probabilities - direct)[inner].max() < 1e-4


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_short_training_run_lowers_the_loss(deep_supervision):
    pairs = [fluorescent_nuclei((128, 128), 30, seed=s) for s in range(3)]
    torch.manual_seed(0)
    net = build_model("unet++", features=(8, 16, 32))
    events = []
    run_to_end(train_iter(net, pairs, patch_size=64, batch_size=4, lr=3e-3, epochs=2, steps_per_epoch=10, seed=0,
                          device="cpu", warmup_steps=5, deep_supervision=deep_supervision), events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    if deep_supervision:
        assert {"level0", "level1"} <= set(events[-1].parts)


# -- bad configurations ----------------------------------------------------------------------

def test_bad_configurations_say_what_to_change():
    with pytest.raises(ValueError, match="at least two positive"):
        UNetPlusPlus(features=[8])
    with pytest.raises(ValueError, match="at least two positive"):
        UNetPlusPlus(features=[8, 0])
    with pytest.raises(ValueError, match="channel counts"):
        UNetPlusPlus(features="wide")
    with pytest.raises(ValueError, match="from 1 to 2"):
        UNetPlusPlus(features=(4, 8, 16), prune_depth=3)
    with pytest.raises(ValueError, match="from 1 to 2"):
        UNetPlusPlus(features=(4, 8, 16), prune_depth=0)
    with pytest.raises(ValueError, match="final, accurate"):
        build_model("unet++", mode="fast")
    with pytest.raises(ValueError, match="one entry per pooling"):
        UNetPlusPlus(features=(4, 8, 16), strides=[2])
    net = UNetPlusPlus(features=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match=r"not a multiple of \(16, 16\).*\(16, 16\).*fewer levels"):
        net(torch.randn(1, 1, 8, 8))  # four poolings do not fit an 8 x 8 input
    with pytest.raises(ValueError, match="multiple of 16"):
        net.output_shape((40, 48))
    with pytest.raises(ValueError, match="1 channel"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="from 1 to 4"):
        net.forward_pruned(torch.randn(1, 1, 16, 16), 5)


def test_registry_defaults():
    spec = get_spec("unet++")
    assert spec.deep_supervision and spec.spatial_dims == 2
    net = build_model("unet++")
    assert net.architecture == "unet++" and net.mode == "final" and net.prune_depth is None
    assert net.config["features"] == [8, 16, 32, 64, 128] and net.depth == 4
    assert 0.3e6 < net.n_parameters < 4e6
    assert net.config["features"][0] == list(spec.defaults["features"])[0]
    json.dumps(net.config)


def _parity_spread(p: torch.Tensor) -> float:
    """Largest difference between the means of a 2D map's four pixel parities (even/odd row x
    even/odd column): 0 on a map with no period-2 pattern (stripes or checkerboard)."""
    means = [float(p[a::2, b::2].mean()) for a in (0, 1) for b in (0, 1)]
    return max(means) - min(means)


def test_resize_upsampling_keeps_a_flat_input_flat_where_transposed_convolutions_stripe_it():
    """Row stripes of the first bundled U-Net++: each output pixel's parity had its own transposed
    convolution taps. Resize up-convolutions (the default now) leave a flat input flat."""
    torch.manual_seed(0)
    flat = torch.full((1, 1, 64, 64), 0.3)
    stripy = UNetPlusPlus(features=(4, 8, 16), upsample="transpose").eval()
    with torch.no_grad():
        assert _parity_spread(stripy(flat)[0, 1, 8:-8, 8:-8]) > 1e-4  # random taps: a period-2 pattern
        from napari_unet.models.unet_pp import with_resize_upsampling

        smooth = with_resize_upsampling(stripy).eval()
        assert _parity_spread(smooth(flat)[0, 1, 8:-8, 8:-8]) < 1e-6
    assert build_model("unet++").config["upsample"] == "resize"
    with pytest.raises(ValueError, match="Unknown upsampling 'bilinear'"):
        UNetPlusPlus(features=(4, 8), upsample="bilinear")


def test_a_model_file_from_before_the_upsample_option_loads_with_transposed_convolutions(tmp_path):
    torch.manual_seed(1)
    old = _randomise_batchnorm(UNetPlusPlus(features=(4, 8, 16), upsample="transpose")).eval()
    old.architecture = "unet++"
    config = make_config(old)
    del config["arguments"]["upsample"]  # written before the option existed
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(config)})
    loaded = load_model(path).net
    assert loaded.config["upsample"] == "transpose"
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x))
