"""U-Net 3+ (Huang et al. 2020): full-scale skips, full-scale deep supervision, the CGM, the hybrid loss."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from napari_unet.inference.predictor import predict, run_to_end
from napari_unet.modelfile import METADATA_KEY, ModelFileError, load_model, make_config, save_model
from napari_unet.models import build_model, get_spec
from napari_unet.models.unet3p import GATE_FLOOR, UNet3Plus, cgm_loss, classification_target, gate_logits
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.training import IGNORE, DeepSupervisionLoss, SegmentationLoss, train_iter


from _helpers import calibrate as _calibrate, randomise_batchnorm as _randomise_batchnorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def _net(**kw):
    torch.manual_seed(0)
    kw.setdefault("features", (4, 8, 16, 32))
    kw.setdefault("cat_channels", 4)
    return _randomise_batchnorm(build_model("unet3+", **kw)).eval()


def _force_cgm(net, present: bool):
    """Make the CGM answer ``present`` for any input (bias far apart, weights zero)."""
    conv = net.cgm[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 20.0] if present else [20.0, 0.0]))


# -- shapes and outputs ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [(24, 40), (40, 24), (56, 8)])  # 3 poolings: deepest maps 3x5, 5x3, 7x1
@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_and_full_scale_side_outputs_highest_resolution_first(size, in_channels):
    net = _net(in_channels=in_channels, out_channels=3)
    assert net.size_divisor == (8, 8) and net.levels == 4
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        y = net(x)
        side = net(x, side_outputs=True)
        encoded = net.encode(x)
    assert y.shape == (2, 3, *size)
    assert isinstance(side, list) and len(side) == 4 and all(s.shape == (2, 3, *size) for s in side)
    assert torch.equal(side[0], y)
    # the last side output is the deepest encoder map's head, bilinearly upsampled
    deepest = F.interpolate(net.heads[3](encoded[-1]), size=size, mode="bilinear", align_corners=False)
    assert torch.allclose(side[3], deepest, atol=1e-6)
    # decoder maps have levels * cat_channels channels
    assert net.decoders[0].fuse[0].out_channels == 16 and net.heads[0].in_channels == 16


@pytest.mark.parametrize("upsample_first", [True, False])
def test_every_scale_reaches_the_top_decoder(upsample_first):
    """Full-scale skips: D[0] sees E[0] directly and every deeper map through an upsampling; in
    the paper's order each of its four input convolutions runs at full resolution, otherwise the
    deeper ones run at their own level's resolution."""
    net = _net(upsample_first=upsample_first)
    seen = {}
    hooks = [conv.register_forward_hook(lambda m, i, o, s=s: seen.__setitem__(s, (i[0].shape, o.shape)))
             for s, conv in enumerate(net.decoders[0].inputs)]
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 24))
    for h in hooks:
        h.remove()
    channels = [4, 16, 16, 32]  # E[0], D[1], D[2] (4 levels x 4), E[3]
    sizes = [(16, 24)] * 4 if upsample_first else [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert {s: (tuple(i), tuple(o)) for s, (i, o) in seen.items()} == {
        s: ((1, c, *n), (1, 4, *n)) for s, (c, n) in enumerate(zip(channels, sizes))}
    # D[2] pools E[0] by 4 and E[1] by 2
    assert [p.kernel_size for p in net.decoders[2].pools.values()] == [(4, 4), (2, 2)]


def test_both_orders_share_the_weights():
    paper, fast = _net(upsample_first=True), _net(upsample_first=False)
    assert {k: v.shape for k, v in paper.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    fast.load_state_dict(paper.state_dict())
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a, b = paper(x, side_outputs=True), fast(x, side_outputs=True)
    assert torch.equal(a[-1], b[-1])  # the deepest head does not go through a decoder
    assert not torch.allclose(a[0], b[0], atol=1e-4)
    assert paper.config["upsample_first"] is True and fast.config["upsample_first"] is False


@pytest.mark.parametrize("upsample_first", [True, False])
def test_3d_anisotropic_shapes_and_gradients(upsample_first):
    torch.manual_seed(0)
    net = UNet3Plus(spatial_dims=3, features=(4, 8, 16), cat_channels=2, strides=[(1, 2, 2), (2, 2, 2)],
                    upsample_first=upsample_first)
    assert net.size_divisor == (2, 4, 4)
    x = torch.randn(2, 1, 6, 12, 20)
    out, prob = net(x, side_outputs=True, with_object_probability=True)
    assert [o.shape for o in out] == [(2, 2, 6, 12, 20)] * 3 and prob.shape == (2,)
    target = torch.randint(0, 2, (2, 6, 12, 20))
    loss = DeepSupervisionLoss()(out, target)[0] + cgm_loss(prob, target)
    loss.backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


# -- gradients -------------------------------------------------------------------------------

def test_gradients_with_and_without_deep_supervision():
    net = _net().train()
    x = torch.randn(2, 1, 16, 16)
    target = torch.randint(0, 2, (2, 16, 16))

    def unused(outputs, prob=None):
        net.zero_grad(set_to_none=True)
        loss = sum(SegmentationLoss()(o, target)[0] for o in outputs)
        if prob is not None:
            loss = loss + cgm_loss(prob, target)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        return {n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}

    side, prob = net(x, side_outputs=True, with_object_probability=True)
    assert unused(side, prob) == set()
    # the segmentation loss alone does not train the CGM
    assert unused(net(x, side_outputs=True)) == {"cgm.1.weight", "cgm.1.bias"}
    # without supervision only the main head (and the CGM through its own loss) learn
    side_heads = {f"heads.{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")}
    assert unused([net(x)]) == side_heads | {"cgm.1.weight", "cgm.1.bias"}


# -- the classification-guided module --------------------------------------------------------

def test_gate_logits_scales_the_foreground_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 4, 5) * 3
    gate = torch.tensor([1.0, 0.3, 0.0])
    q = torch.softmax(gate_logits(logits, gate), dim=1)
    p = torch.softmax(logits, dim=1)
    expected_fg = p[:, 1:] * gate.clamp_min(GATE_FLOOR).view(3, 1, 1, 1)
    assert torch.allclose(q[:, 1:], expected_fg, atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(3, 4, 5), atol=1e-6)
    assert (q[2, 0] > 0.999).all()  # no object: background wins everywhere
    # one sigmoid channel
    single = torch.randn(3, 1, 4, 5) * 3
    assert torch.allclose(torch.sigmoid(gate_logits(single, gate)),
                          torch.sigmoid(single) * gate.clamp_min(GATE_FLOOR).view(3, 1, 1, 1), atol=1e-6)
    # differentiable in both arguments
    logits.requires_grad_(True)
    g = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    gate_logits(logits, g)[:, 1].sum().backward()
    assert torch.isfinite(logits.grad).all() and g.grad.abs().sum() > 0


def test_classification_target_and_cgm_loss_hand_values():
    target = torch.tensor([[[0, 1], [0, 0]], [[0, 0], [IGNORE, 0]], [[IGNORE, 2], [0, 0]]])
    assert classification_target(target).tolist() == [1.0, 0.0, 1.0]
    prob = torch.tensor([0.8, 0.3, 0.6])
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.6)) / 3
    assert cgm_loss(prob, target).item() == pytest.approx(expected, rel=1e-6)
    assert cgm_loss(prob, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(cgm_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item())
    with pytest.raises(ValueError, match="one probability per sample"):
        cgm_loss(prob, torch.tensor([1.0, 0.0]))


def test_object_probability_is_stored_per_sample():
    net = _net()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        prob = net.object_probability(x)
        _, returned = net(x, with_object_probability=True)
    assert prob.shape == (3,) and ((prob > 0) & (prob < 1)).all()
    assert torch.allclose(returned, prob)
    _force_cgm(net, present=False)
    with torch.no_grad():
        _, returned = net(x, with_object_probability=True)
    assert (returned < 1e-6).all()


def test_gating_in_eval_mode_only_and_only_when_switched_on():
    net = _net(out_channels=3)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        plain = net(x, side_outputs=True)
        _force_cgm(net, present=False)
        assert all(torch.equal(a, b) for a, b in zip(plain, net(x, side_outputs=True)))  # off: no effect
        net.set_classification_guided(True)
        assert net.config["classification_guided"] is True
        gated = net(x, side_outputs=True)
        for a, b in zip(plain, gated):  # "no object": foreground probabilities * 1e-6
            assert torch.allclose(torch.softmax(b, 1)[:, 1:], torch.softmax(a, 1)[:, 1:] * GATE_FLOOR, atol=1e-9)
            assert (b.argmax(1) == 0).all()
        _force_cgm(net, present=True)
        assert all(torch.equal(a, b) for a, b in zip(plain, net(x, side_outputs=True)))  # object: unchanged
        _force_cgm(net, present=False)
        net.train()
        for m in net.modules():  # same batch-norm statistics as in eval, to compare
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        assert all(torch.equal(a, b) for a, b in zip(plain, net(x, side_outputs=True)))  # training: no gating
    with pytest.raises(ValueError, match="True or False"):
        net.set_classification_guided("yes")


def test_cgm_learns_which_patches_hold_objects():
    torch.manual_seed(0)
    image, labels = fluorescent_nuclei((128, 128), 12, seed=1)
    background, _ = fluorescent_nuclei((64, 128), 0, seed=2)  # the same camera and background, no nuclei
    mean, std = image.mean(), image.std()
    image, background = ((image - mean) / std).astype(np.float32), ((background - mean) / std).astype(np.float32)
    corners = [(y, x) for y in range(0, 128, 32) for x in range(0, 128, 32)]
    full = [(image[y:y + 32, x:x + 32], labels[y:y + 32, x:x + 32]) for y, x in corners]
    empty = [(background[y:y + 32, x:x + 32], np.zeros((32, 32))) for y in (0, 32) for x in range(0, 128, 32)]
    patches = [p for p in full if (p[1] > 0).any()][:8] + empty
    assert len(patches) == 16
    x = torch.tensor(np.stack([p[0] for p in patches]))[:, None]
    y = torch.tensor(np.stack([p[1] > 0 for p in patches])).long()
    net = UNet3Plus(features=(4, 8, 16), cat_channels=4, norm="group")  # batch-independent: eval = train
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        _, prob = net.train()(x, with_object_probability=True)
        loss = cgm_loss(prob, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        prob = net.eval().object_probability(x)
    assert (prob[:8] > 0.5).all() and (prob[8:] < 0.5).all()


# -- the engine ------------------------------------------------------------------------------

def test_save_load_round_trip_with_the_cgm_switched_on(tmp_path):
    net = _net(classification_guided=True)
    path = save_model(tmp_path / "u3p", net, make_config(net))
    loaded = load_model(path).net
    assert isinstance(loaded, UNet3Plus) and loaded.classification_guided and loaded.config == net.config
    x = torch.randn(2, 1, 24, 16)
    with torch.no_grad():
        (a, net_prob), (b, loaded_prob) = (net(x, side_outputs=True, with_object_probability=True),
                                           loaded(x, side_outputs=True, with_object_probability=True))
    assert len(a) == len(b) == 4 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(net_prob, loaded_prob)
    copy.deepcopy(loaded)  # the predictor copies the network: the stored probability must not hinder it


def test_a_network_used_for_training_can_still_be_copied():
    net = _net().train()
    out, prob = net(torch.randn(2, 1, 16, 16), with_object_probability=True)
    with torch.no_grad():  # what the predictor reads
        _, read = net(torch.randn(2, 1, 16, 16), with_object_probability=True)
    assert prob.requires_grad and not read.requires_grad
    copy.deepcopy(net)


def test_wrong_weights_for_the_config_are_refused(tmp_path):
    three = _net(features=(4, 8), in_channels=3)
    one = _net(features=(4, 8), in_channels=1)
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in three.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(make_config(one))})
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)


def test_set_out_channels_replaces_every_head_only():
    net = _net(features=(4, 8, 16))
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("heads.")}
    net.set_out_channels(3)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the CGM (2 channels) is kept
    assert net.config["out_channels"] == net.out_channels == 3
    with torch.no_grad():
        assert [o.shape for o in net(torch.randn(1, 1, 8, 8), side_outputs=True)] == [(1, 3, 8, 8)] * 3


def test_tiled_prediction_of_a_200_by_300_image(tmp_path):
    image = np.random.default_rng(0).random((200, 300), dtype=np.float32)
    x = torch.from_numpy(image)[None, None]
    net = _calibrate(_net(features=(4, 8, 16)), x)
    model = load_model(save_model(tmp_path / "u3p", net, make_config(net, normalization={"kind": "none"})))
    out = predict(model, image, device="cpu", tile_size=128)
    assert out.probabilities.shape == (1, 200, 300)
    with torch.no_grad():
        direct = torch.softmax(net(x), dim=1)[0, 1:].numpy()
    assert direct.std() > 0.01
    # away from the image border (mirrored by the predictor, zero-padded here) tiles match one forward
    inner = (slice(None), slice(32, -32), slice(32, -32))
    assert np.abs(out.probabilities - direct)[inner].max() < 1e-3


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_short_training_run_with_the_hybrid_loss(deep_supervision):
    pairs = [fluorescent_nuclei((128, 128), 30, seed=s) for s in range(3)]
    torch.manual_seed(0)
    net = build_model("unet3+", features=(8, 16, 32), cat_channels=4)
    events = []
    run_to_end(train_iter(net, pairs, patch_size=64, batch_size=4, lr=3e-3, epochs=2, steps_per_epoch=10, seed=0,
                          device="cpu", warmup_steps=5, loss=SegmentationLoss.from_spec("hybrid"),
                          deep_supervision=deep_supervision), events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert {"focal", "ms_ssim", "iou"} <= set(events[-1].parts)
    if deep_supervision:
        assert {"level0", "level1", "level2"} <= set(events[-1].parts)


def test_training_with_the_classification_loss_teaches_the_cgm():
    """classification_weight adds cgm_loss to the step: the CGM's weights move and its loss falls;
    without it the CGM is not trained at all."""
    pairs = [fluorescent_nuclei((128, 128), 6, seed=s) for s in range(3)] + \
        [fluorescent_nuclei((128, 128), 0, seed=10 + s)[:2] for s in range(3)]  # empty fields
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        net = build_model("unet3+", features=(8, 16, 32), cat_channels=4)
        before = [p.detach().clone() for p in net.cgm.parameters()]
        events = []
        run_to_end(train_iter(net, pairs, patch_size=64, batch_size=4, lr=3e-3, epochs=3, steps_per_epoch=10,
                              seed=0, device="cpu", warmup_steps=5, foreground_bias=0.5,
                              classification_weight=weight), events.append)
        moved = any(not torch.equal(a, p) for a, p in zip(before, net.cgm.parameters()))
        if weight == 0.0:
            assert not moved and "cgm" not in events[-1].parts
        else:
            assert moved
            cgm = [e.parts["cgm"] for e in events if "cgm" in e.parts]
            assert len(cgm) == 30 and np.mean(cgm[-10:]) < np.mean(cgm[:10])
    with pytest.raises(ValueError, match="classification-guided module"):
        run_to_end(train_iter(build_model("unet", features=(4, 8)), pairs[:1], patch_size=32, epochs=1,
                              steps_per_epoch=1, device="cpu", classification_weight=1.0))


# -- bad configurations ----------------------------------------------------------------------

def test_bad_configurations_say_what_to_change():
    with pytest.raises(ValueError, match="at least two positive"):
        UNet3Plus(features=[8])
    with pytest.raises(ValueError, match="at least two positive"):
        UNet3Plus(features=[8, -1])
    with pytest.raises(ValueError, match="cat_channels must be a positive integer"):
        UNet3Plus(cat_channels=0)
    with pytest.raises(ValueError, match="True or False"):
        build_model("unet3+", classification_guided=1)
    with pytest.raises(ValueError, match="one entry per pooling"):
        UNet3Plus(features=(4, 8, 16), strides=[2, 2, 2])
    with pytest.raises(ValueError, match="upsample_first must be True or False"):
        UNet3Plus(upsample_first="paper")
    net = UNet3Plus(features=(4, 8, 16, 32, 64), cat_channels=2)
    with pytest.raises(ValueError, match=r"not a multiple of \(16, 16\).*fewer levels"):
        net(torch.randn(1, 1, 8, 8))  # four poolings do not fit an 8 x 8 input
    with pytest.raises(ValueError, match="multiple of 16"):
        net.output_shape((40, 48))
    with pytest.raises(ValueError, match="1 channel"):
        net(torch.randn(1, 3, 16, 16))


def test_registry_defaults():
    spec = get_spec("unet3+")
    assert spec.deep_supervision and spec.spatial_dims == 2
    net = build_model("unet3+")
    assert net.architecture == "unet3+" and not net.classification_guided
    assert net.config["cat_channels"] == 8 and net.config["upsample_first"] is False
    assert 0.3e6 < net.n_parameters < 4e6
    assert net.config["features"][0] == list(spec.defaults["features"])[0]
    json.dumps(net.config)
