"""Losses, patches and a short real training run (no Qt; CPU, a few seconds)."""

from __future__ import annotations

import copy
import json
import math
import threading

import numpy as np
import pytest
import torch

from napari_unet.inference.predictor import run_to_end
from napari_unet.models import build_model
from napari_unet.synthetic import fluorescent_nuclei
from napari_unet.training import (IGNORE, PatchSampler, SegmentationLoss, binary_target, cross_entropy,
                                  prepare_image, soft_dice, touching_boundaries, train_iter)
from napari_unet.modelfile import DEFAULT_NORMALIZATION

LOG2 = math.log(2.0)


# -- losses ----------------------------------------------------------------------------------

def test_cross_entropy_hand_values():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 2.0  # pixel 2: p(foreground) = e^2 / (1 + e^2)
    ce2 = math.log(1 + math.exp(-2.0))
    target = torch.tensor([[[0, 1]]])
    assert cross_entropy(logits, target).item() == pytest.approx((LOG2 + ce2) / 2, rel=1e-6)
    # ignored pixels do not count
    assert cross_entropy(logits, torch.tensor([[[IGNORE, 1]]])).item() == pytest.approx(ce2, rel=1e-6)
    # weights: sum(w * ce) / sum(w)
    w = torch.tensor([[[1.0, 3.0]]])
    assert cross_entropy(logits, target, w).item() == pytest.approx((LOG2 + 3 * ce2) / 4, rel=1e-6)
    # nothing counted: zero, finite, and still differentiable
    logits.requires_grad_(True)
    none = cross_entropy(logits, torch.full((1, 1, 2), IGNORE))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_sigmoid_single_channel_cross_entropy():
    logits = torch.zeros(2, 1, 3, 3)
    assert cross_entropy(logits, torch.randint(0, 2, (2, 3, 3))).item() == pytest.approx(LOG2, rel=1e-6)


def test_soft_dice_hand_values():
    logits = torch.zeros(1, 2, 2, 2)  # p(foreground) = 0.5 everywhere
    target = torch.tensor([[[1, 1], [0, 0]]])
    # 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert soft_dice(logits, target).item() == pytest.approx(0.4, rel=1e-6)
    ignored = torch.tensor([[[IGNORE, 1], [0, 0]]])  # sum(p)=1.5, sum(t)=1, sum(pt)=0.5
    assert soft_dice(logits, ignored).item() == pytest.approx(1 - 2.0 / 3.5, rel=1e-6)
    perfect = torch.zeros(1, 2, 2, 2)
    perfect[:, 1] = 20.0 * (2 * target - 1)
    assert soft_dice(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_segmentation_loss_is_the_weighted_sum():
    logits, target = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    total, parts = SegmentationLoss(ce_weight=1.0, dice_weight=0.5)(logits, target)
    assert total.item() == pytest.approx(parts["ce"] + 0.5 * parts["dice"], rel=1e-6)
    with pytest.raises(ValueError):
        SegmentationLoss(0, 0)
    with pytest.raises(ValueError, match="target"):
        cross_entropy(logits, target[:, :4])


# -- targets and patches ---------------------------------------------------------------------

def test_binary_target_separates_touching_objects():
    labels = np.zeros((12, 20), np.int32)
    labels[2:10, 1:6] = 1
    labels[2:10, 6:11] = 2  # touches 1 along a vertical line
    labels[2:10, 14:19] = 3  # alone
    target = binary_target(labels)
    assert target.dtype == np.int8
    assert (target[2:10, 5] == 0).all() and (target[2:10, 6] == 0).all()  # a 2-pixel gap
    assert (target[2:10, 1:5] == 1).all() and (target[2:10, 7:11] == 1).all()
    assert (target[labels == 3] == 1).all()  # isolated objects keep their rim
    assert (target[labels == 0] == 0).all()
    weighted = prepare_image(labels.astype(np.float32), labels, DEFAULT_NORMALIZATION, gap_weight=5.0)
    assert (weighted.weights[2:10, 5:7] == 5.0).all() and weighted.weights.sum() == labels.size + 4 * 16
    # the same with a reviewed region (gap weights kept, unreviewed pixels ignored by the target)
    reviewed = np.ones(labels.shape, bool)
    reviewed[:, -2:] = False
    part = prepare_image(labels.astype(np.float32), labels, DEFAULT_NORMALIZATION, gap_weight=5.0, reviewed=reviewed)
    np.testing.assert_array_equal(part.weights, weighted.weights)
    assert (part.target[:, -2:] == IGNORE).all()
    # the paper's weight map instead, with or without a reviewed region
    params = {"w0": 10.0, "sigma": 5.0, "class_weights": None}
    for given in (None, reviewed):
        mapped = prepare_image(labels.astype(np.float32), labels, DEFAULT_NORMALIZATION, weight_map=params,
                               reviewed=given)
        assert mapped.weights[5, 5] > 8.0  # the separation term in the gap


@pytest.fixture(scope="module")
def nuclei_pairs():
    return [fluorescent_nuclei((128, 128), 14, seed=s) for s in range(4)]


def _sampler(pairs, seed, patch=64, **kw):
    images = [prepare_image(im, lab, DEFAULT_NORMALIZATION, patch) for im, lab in pairs]
    return PatchSampler(images, patch, np.random.default_rng(seed), **kw)


def test_patches_shapes_dtypes_and_determinism(nuclei_pairs):
    x, y, w = _sampler(nuclei_pairs, 1).batch(3)
    assert x.shape == (3, 1, 64, 64) and x.dtype == np.float32
    assert y.shape == (3, 64, 64) and y.dtype == np.int64 and set(np.unique(y)) <= {0, 1}
    assert w is None
    x2, y2, _ = _sampler(nuclei_pairs, 1).batch(3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _, _ = _sampler(nuclei_pairs, 2).batch(3)
    assert not np.array_equal(x, x3)


def test_gap_weights_follow_the_patches(nuclei_pairs):
    from napari_unet.training.augment import Augmenter

    images = [prepare_image(im, lab, DEFAULT_NORMALIZATION, 64, gap_weight=4.0) for im, lab in nuclei_pairs]
    rigid = Augmenter(p_elastic=0.0, p_scale=0.0)  # flips and turns only: weights keep their two values
    _, y, w = PatchSampler(images, 64, np.random.default_rng(0), augment=rigid).batch(4)
    assert w.shape == y.shape and w.dtype == np.float32 and set(np.unique(w)) <= {1.0, 4.0}
    assert (y[w == 4.0] == 0).all()  # weighted pixels are the background gaps


def test_paper_weight_map_emphasises_the_gaps_between_touching_objects(nuclei_pairs):
    image, labels = nuclei_pairs[0]
    prepared = prepare_image(image, labels, DEFAULT_NORMALIZATION, 64, weight_map={"w0": 10.0, "sigma": 5.0})
    w, t = prepared.weights, prepared.target
    gaps = touching_boundaries(labels.astype(np.int64))
    assert gaps.any() and w.dtype == np.float32 and w.shape == t.shape
    # the cut gap is about 2 px wide: a gap pixel is 1 px from one object and 1 to 3 px from the
    # other (diagonal contacts), so w = w_c(bg) + 10 * exp(-(1 + d2)^2 / 50) with 1 <= d2 <= 3
    assert w[gaps].min() >= 1.0 + 10.0 * np.exp(-16 / 50) - 1e-4
    assert w[gaps].max() <= 1.0 + 10.0 * np.exp(-4 / 50) + 1e-4
    assert w[t == 0].max() <= 1.0 + 10.0 * np.exp(-4 / 50) + 1e-4  # d1, d2 >= 1 px everywhere
    assert np.median(w[gaps]) > 5 * np.median(w[(t == 0) & ~gaps])
    assert w[t == 1].min() > 1.0 and np.isclose(w[(t == 0) & ~gaps].min(), 1.0)  # rarer foreground weighted up
    with pytest.raises(ValueError, match="not both"):
        prepare_image(image, labels, DEFAULT_NORMALIZATION, weight_map={}, gap_weight=3.0)


def test_boundary_target_separates_touching_objects_with_a_boundary_class():
    from napari_unet.training.patches import boundary_target

    labels = np.zeros((10, 12), np.int32)
    labels[2:8, 1:6], labels[2:8, 6:11] = 1, 2  # touching along a column
    t = boundary_target(labels)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[2:8, 5] == 2).all() and (t[2:8, 6] == 2).all()  # both sides of the contact
    assert (t[3:7, 2:5] == 1).all() and (t[labels == 0] == 0).all()
    interiors, n = __import__("scipy").ndimage.label(t == 1)
    assert n == 2  # the interiors, the watershed's seeds, are apart


def test_boundary_target_training_run(nuclei_pairs, one_thread):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="3 output channels"):
        next(train_iter(build_model("unet", features=(8, 16)), nuclei_pairs[:1], target="boundary", epochs=1))
    net = build_model("unet", features=(8, 16, 32), out_channels=3)
    events = []
    result = run_to_end(train_iter(net, nuclei_pairs[:3], nuclei_pairs[3:], patch_size=64, batch_size=4, lr=3e-3,
                                   epochs=2, steps_per_epoch=10, seed=0, device="cpu", warmup_steps=5,
                                   target="boundary", weight_map={"w0": 10.0, "sigma": 5.0}), events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert 0.0 <= result.metrics["ap50"] <= 1.0 and result.steps == 20


def test_foreground_bias_puts_objects_in_patches(nuclei_pairs):
    _, y, _ = _sampler(nuclei_pairs, 0, patch=32, foreground_bias=1.0).batch(16)
    assert all((t == 1).any() for t in y)


def test_small_images_are_padded_and_padding_ignored():
    image, labels = fluorescent_nuclei((40, 50), 3, seed=3)
    prepared = prepare_image(image, labels, DEFAULT_NORMALIZATION, 64)
    assert prepared.image.shape == (1, 64, 64) and prepared.target.shape == (64, 64)
    assert (prepared.target[40:] == IGNORE).all() and (prepared.target[:, 50:] == IGNORE).all()
    assert (prepared.target[:40, :50] >= 0).all()
    x, y, _ = PatchSampler([prepared], 64, np.random.default_rng(0)).batch(2)
    assert x.shape == (2, 1, 64, 64) and (y == IGNORE).any()
    with pytest.raises(ValueError, match="smaller"):
        PatchSampler([prepare_image(image, labels, DEFAULT_NORMALIZATION)], 64, np.random.default_rng(0))


def test_only_the_reviewed_region_counts(nuclei_pairs):
    image, labels = nuclei_pairs[0]
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:, :40] = True  # the user checked the left 40 columns only
    prepared = prepare_image(image, labels, DEFAULT_NORMALIZATION, 32, reviewed=reviewed)
    assert (prepared.target[:, 40:] == IGNORE).all()
    np.testing.assert_array_equal(prepared.target[:, :40], binary_target(labels)[:, :40])
    # with no foreground bias every patch is anchored on a reviewed pixel
    sampler = PatchSampler([prepared], 32, np.random.default_rng(0), foreground_bias=0.0, augment=False)
    _, y, _ = sampler.batch(32)
    assert all((t != IGNORE).any() for t in y)
    with pytest.raises(ValueError, match="reviewed"):
        prepare_image(image, labels, DEFAULT_NORMALIZATION, reviewed=np.zeros_like(reviewed))
    with pytest.raises(ValueError, match="does not match"):
        prepare_image(image, labels, DEFAULT_NORMALIZATION, reviewed=reviewed[:10])


# -- a real training run ---------------------------------------------------------------------

def test_gradients_are_finite_and_reach_every_parameter(nuclei_pairs):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16, 32)).train()
    x, y, _ = _sampler(nuclei_pairs, 0).batch(2)
    total, _ = SegmentationLoss()(net(torch.from_numpy(x)), torch.from_numpy(y))
    total.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("weighting", [{}, {"weight_map": {"w0": 10.0, "sigma": 5.0}}], ids=["plain", "weight-map"])
def test_short_training_run_lowers_the_loss(nuclei_pairs, one_thread, weighting):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16, 32))
    gen = train_iter(net, nuclei_pairs[:3], nuclei_pairs[3:], patch_size=64, batch_size=4, lr=3e-3, epochs=4,
                     steps_per_epoch=10, seed=0, device="cpu", warmup_steps=5, **weighting)
    events = []
    result = run_to_end(gen, events.append)
    losses = [e.loss for e in events if not math.isnan(e.loss)]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert [e.step for e in events if e.validated] == [10, 20, 30, 40]
    assert all(e.lr > 0 for e in events) and events[-1].seconds_left == 0.0
    assert result.steps == 40 and result.stopped == "finished"
    assert result.metrics["ap50"] == max(m["ap50"] for _, m in result.history)
    # the best state is loaded into the network
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, result.state[key])


def test_stop_event_and_nan_guard(nuclei_pairs):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16))
    stop = threading.Event()
    gen = train_iter(net, nuclei_pairs[:1], patch_size=32, batch_size=1, epochs=100, seed=0, device="cpu", stop=stop)
    next(gen)
    stop.set()
    result = run_to_end(gen)
    assert result.stopped == "stopped by user" and result.steps == 1

    def broken(logits, target, weights=None):
        return logits.sum() * float("nan"), {}

    with torch.no_grad():  # weights other than the checkpoint's, which a refused resume must leave
        for param in net.parameters():
            param.add_(1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = run_to_end(train_iter(net, nuclei_pairs[:1], patch_size=32, batch_size=1, epochs=1, seed=0,
                                   device="cpu", loss=broken))
    assert result.stopped.startswith("non-finite loss") and result.steps == 0
    for key, value in net.state_dict().items():
        assert torch.isfinite(value.float()).all()
        torch.testing.assert_close(value, before[key])


def test_bad_arguments_are_refused(nuclei_pairs):
    net = build_model("unet", features=(8, 16, 32))
    with pytest.raises(ValueError, match="epochs or minutes"):
        next(train_iter(net, nuclei_pairs))
    with pytest.raises(ValueError, match="multiple of 4"):
        next(train_iter(net, nuclei_pairs, patch_size=66, epochs=1))


def test_early_stopping_and_improved_events(nuclei_pairs, one_thread):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16))
    events = []
    # lr 0: the validation score cannot improve after the first validation
    result = run_to_end(train_iter(net, nuclei_pairs[:2], nuclei_pairs[2:3], patch_size=64, batch_size=2, lr=0.0,
                                   epochs=20, steps_per_epoch=2, seed=0, device="cpu", patience=2), events.append)
    assert result.stopped.startswith("early stop") and result.steps == 6
    assert [e.step for e in events if e.improved] == [2]


@pytest.mark.parametrize("stopped_at", [8, 6])
def test_a_resumed_run_takes_the_same_steps_as_one_that_never_stopped(nuclei_pairs, tmp_path, stopped_at):
    """Checkpoint after every epoch, and where a run is stopped; a 3-epoch run stopped after
    epoch 2 (or in its middle: napari closed) and resumed ends with the weights and best model of
    an uninterrupted run (same steps, learning rates and patches)."""
    torch.manual_seed(0)
    start = build_model("unet", features=(4, 8))
    settings = dict(patch_size=64, batch_size=2, steps_per_epoch=4, seed=3, device="cpu", warmup_steps=2,
                    lr=3e-3)
    straight = copy.deepcopy(start)
    whole = run_to_end(train_iter(straight, nuclei_pairs[:3], nuclei_pairs[3:], epochs=3,
                                  checkpoint=tmp_path / "straight.safetensors", **settings))
    part, stop = copy.deepcopy(start), threading.Event()  # stopped (or killed) after epoch 2
    run_to_end(train_iter(part, nuclei_pairs[:3], nuclei_pairs[3:], epochs=3, checkpoint=tmp_path / "run.safetensors",
                          stop=stop, **settings), lambda e: e.step == stopped_at and stop.set())
    resumed = copy.deepcopy(start)  # a fresh process: only the checkpoint carries the run over
    events = []
    result = run_to_end(train_iter(resumed, nuclei_pairs[:3], nuclei_pairs[3:], epochs=3, resume=True,
                                   checkpoint=tmp_path / "run.safetensors", **settings), events.append)
    assert [e.step for e in events if e.loss == e.loss] == list(range(stopped_at + 1, 13))  # only what was left
    assert result.steps == whole.steps == 12 and result.best_step == whole.best_step
    assert [s for s, _ in result.history] == [s for s, _ in whole.history] == [4, 8, 12]
    for key, value in whole.state.items():
        torch.testing.assert_close(result.state[key], value, rtol=1e-4, atol=1e-5)
    from safetensors.torch import load_file  # the last weights and AdamW state, not only the best

    after_straight, after_resumed = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "run.safetensors")
    assert after_straight.keys() == after_resumed.keys() and any(k.startswith("optim/") for k in after_straight)
    for key, value in after_straight.items():
        if key != "rng/torch":
            torch.testing.assert_close(after_resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_resume_without_a_checkpoint_or_with_another_network_is_refused(nuclei_pairs, tmp_path):
    net = build_model("unet", features=(4, 8))
    with pytest.raises(ValueError, match="Nothing to resume from"):
        next(train_iter(net, nuclei_pairs[:1], epochs=1, resume=True, checkpoint=tmp_path / "none.safetensors"))
    run_to_end(train_iter(net, nuclei_pairs[:1], epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1,
                          device="cpu", checkpoint=tmp_path / "c.safetensors"))
    other = build_model("unet", features=(4, 8, 16))
    with pytest.raises(ValueError, match="belongs to another network"):
        next(train_iter(other, nuclei_pairs[:1], epochs=2, steps_per_epoch=1, patch_size=64, device="cpu",
                        resume=True, checkpoint=tmp_path / "c.safetensors"))
    with torch.no_grad():  # weights other than the checkpoint's, which a refused resume must leave
        for param in net.parameters():
            param.add_(1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="patches of 64 x 64 px, this one asks for 32 x 32 px"):
        next(train_iter(net, nuclei_pairs[:1], epochs=2, steps_per_epoch=1, patch_size=32, batch_size=1,
                        device="cpu", resume=True, checkpoint=tmp_path / "c.safetensors"))
    for key, value in before.items():  # refused before anything was restored
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["napari_unet_checkpoint"])["patch_shape"] == [64, 64]
    result = run_to_end(train_iter(net, nuclei_pairs[:1], epochs=2, steps_per_epoch=1, patch_size=64, batch_size=1,
                                   device="cpu", resume=True, checkpoint=tmp_path / "c.safetensors"))
    assert result.steps == 2 and not result.warnings  # the same patch resumes
    from safetensors.torch import load_file, save_file

    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:  # as written before the patch was recorded
        meta = json.loads(f.metadata()["napari_unet_checkpoint"])
    del meta["patch_shape"]
    save_file(load_file(tmp_path / "c.safetensors"), tmp_path / "old.safetensors",
              metadata={"napari_unet_checkpoint": json.dumps(meta)})
    result = run_to_end(train_iter(net, nuclei_pairs[:1], epochs=3, steps_per_epoch=1, patch_size=32, batch_size=1,
                                   device="cpu", resume=True, checkpoint=tmp_path / "old.safetensors"))
    assert result.steps == 3 and result.warnings == [
        f"The checkpoint {tmp_path / 'old.safetensors'} does not say which patches its run trained on: resumed with "
        "patches of 32 x 32 px."]


def test_finetune_stores_the_post_processing_chosen_on_its_validation_region(tmp_path, one_thread):
    """After training, threshold / minimum size / splitting are chosen on the held-out regions and
    stored in the model file: segment_iter (and the widgets' fields) use them."""
    from napari_unet.finetune import FinetuneSettings, finetune_iter
    from napari_unet.inference.postprocess import THRESHOLDS
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.modelfile import load_model
    from napari_unet.synthetic import fluorescent_nuclei

    triples = []
    for seed in range(2):
        image, labels = fluorescent_nuclei((160, 160), 18, seed=seed)
        triples.append((image, labels, np.ones(labels.shape, bool)))
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=3, patch_size=64, batch_size=2,
                                device="cpu", only_if_better=False)  # 3 steps may not beat the base
    result = run_to_end(finetune_iter("unet", triples, settings, out_dir=tmp_path))
    assert result.tuned_ap50 is not None and 0.0 <= result.tuned_ap50 <= 1.0
    assert result.postprocess["threshold"] in THRESHOLDS
    model = load_model(result.path)
    assert model.postprocess == result.postprocess
    assert model.config["provenance"]["postprocess_tuned"] and "Post-processing chosen" in model.config["card"]
    assert model.config["provenance"]["weight_map"] == {"w0": 10.0, "sigma": 5.0, "class_weights": None}


def test_the_base_is_scored_on_the_fully_reviewed_regions_within_a_pixel_budget():
    """The base model trained on none of the corrections: their reviewed boxes choose its
    post-processing, where fully reviewed (objects in an unreviewed hole would count as false), the
    images in turn (one stack does not take the budget), the last one cut to what is left of it."""
    from napari_unet.training.corrections import Corrections, reviewed_regions

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (100, 120)).astype(np.int32)
    box = np.zeros((100, 120), bool)
    box[10:60, 20:100] = True
    holed = box.copy()
    holed[10:20, 20:30] = False
    images = [rng.random((100, 120)) for _ in range(3)]
    triples = [(images[0], labels, holed), (images[1], labels, box), (images[2], labels, np.ones_like(box))]
    regions = reviewed_regions(triples)
    assert [r[0].shape for r in regions] == [(50, 80), (100, 120)]  # the holed box is left out
    np.testing.assert_array_equal(regions[0][0], images[1][10:60, 20:100])
    np.testing.assert_array_equal(regions[0][1], labels[10:60, 20:100])
    # the budget counts pixels at the base's scale; the region that passes it is cut along its longer axis
    cut = reviewed_regions(triples, budget=4000 + 100 * 70)
    assert [r[0].shape for r in cut] == [(50, 80), (100, 70)]
    np.testing.assert_array_equal(cut[1][0], images[2][:, :70])
    assert [r[0].shape for r in reviewed_regions(triples, scale=0.5, budget=1000 + 2500)] == [(50, 80), (100, 100)]
    assert len(reviewed_regions(triples, budget=4000 + 100 * 63)) == 1  # a cut under 64 px is left out
    # the planes of a stack (one group) come after the first plane of every other image
    stack = Corrections([triples[1]] * 3 + [triples[2]], groups=[0, 0, 0, 1])
    assert [r[0].shape for r in reviewed_regions(stack, budget=4000 + 12000 + 4000)] == [(50, 80), (100, 120),
                                                                                             (50, 80)]


def test_the_base_is_scored_at_its_own_scale_on_all_the_corrections(nuclei_pairs, make_random_model, tmp_path):
    """A base that declares its object size is scored on the corrections resized by its own scale
    (not the training scale): the held-out strips and all the reviewed regions alike."""
    from napari_unet.finetune import FinetuneSettings
    from napari_unet.modelfile import load_model, make_config, save_model
    from napari_unet.training.corrections import PreparedCorrections, check_corrections

    random = load_model(make_random_model("scaled-base"))
    base = load_model(save_model(tmp_path / "scaled.safetensors", random.net,
                                 make_config(random.net, "unet", "binary", random.normalization, {}, "# s", 16.0)))
    triples = [(image, labels, None) for image, labels in nuclei_pairs[:2]]
    checked = check_corrections(triples, 2)
    data = PreparedCorrections.split(FinetuneSettings(object_diameter=8.0), base, checked)
    assert data.scale != data.base_scale and data.base_scale == pytest.approx(base.scale(data.diameter))
    regions = data.base_regions(checked)
    assert len(regions) == 2
    for (image, labels, _), (r_image, r_labels) in zip(checked, regions):
        expected = tuple(round(n * data.base_scale) for n in labels.shape)
        assert r_labels.shape == r_image.shape[-2:] and max(abs(a - b) for a, b in zip(r_labels.shape, expected)) <= 1
    for (_, strip), (_, region) in zip(data.base_val, regions):  # the strips: the same scale (a side in common)
        assert strip.shape[0] == region.shape[0] or strip.shape[1] == region.shape[1]


def test_validation_split_three_images_all_train_four_hold_one_out_whole():
    """Three corrected images all train (a reviewed strip of each is held out, cut off its training
    image); from four on, every 4th image is held out whole. Never a pixel in both."""
    from napari_unet.finetune import split_by_region

    rng = np.random.default_rng(7)
    triples = [(rng.random((200, 300)), rng.integers(0, 5, (200, 300)).astype(np.int32), np.ones((200, 300), bool))
               for _ in range(4)]
    train, val = split_by_region(triples[:3], 0.25)
    assert len(train) == 3 and len(val) == 3
    for (image, labels, reviewed), (v_image, v_labels), (full, full_labels, _) in zip(train, val, triples):
        assert image.shape == (200, 225) and v_image.shape == (200, 75)  # the longer axis, 25 %
        np.testing.assert_array_equal(np.concatenate([image, v_image], 1), full)
        np.testing.assert_array_equal(np.concatenate([labels, v_labels], 1), full_labels)
    train, val = split_by_region(triples, 0.25)
    assert len(train) == 3 and len(val) == 1 and np.array_equal(val[0][0], triples[0][0])
    assert all(t[0].shape == (200, 300) for t in train)
    # held out whole, but reviewed only in a box (the visible area): scored in that box only, so the
    # objects a model finds in the unreviewed rest are not counted as false positives
    boxed = [(im, lab, np.pad(np.ones((120, 150), bool), ((30, 50), (100, 50)))) for im, lab, _ in triples]
    train, val = split_by_region(boxed, 0.25)
    assert len(val) == 1 and val[0][0].shape == (120, 150)
    np.testing.assert_array_equal(val[0][1], triples[0][1][30:150, 100:250])
    # a reviewed box (the left 200 x 200): its strip is held out, the rest of the image trains
    partly = [(im, lab, np.pad(np.ones((200, 200), bool), ((0, 0), (0, 100)))) for im, lab, _ in triples[:2]]
    train, val = split_by_region(partly, 0.25)
    assert [t[0].shape for t in train] == [(136, 300)] * 2 and [v[0].shape for v in val] == [(64, 200)] * 2
    np.testing.assert_array_equal(val[0][1], triples[0][1][136:, :200])
    # no fully reviewed strip anywhere (a checkerboard): two images, the first is held out whole
    sparse = [(im, lab, np.indices((200, 300)).sum(0) % 2 == 0) for im, lab, _ in triples[:2]]
    train, val = split_by_region(sparse, 0.25)
    assert len(train) == 1 and len(val) == 1 and val[0][1][0, 1] == 0  # unreviewed pixels count as unknown
    # one small image: nothing can be held out
    assert split_by_region([(triples[0][0][:100, :100], triples[0][1][:100, :100], np.ones((100, 100), bool))])[1] == []


def test_the_planes_of_a_stack_are_held_out_together():
    """A 2D model fine-tuned on stacks: a plane is never validated while its neighbours (nearly the
    same objects) train. Four stacks: every plane of the first is held out, none of the others."""
    from napari_unet.training.corrections import check_corrections, split_by_region

    rng = np.random.default_rng(8)
    stacks = [(rng.random((5, 96, 96)), rng.integers(0, 4, (5, 96, 96)).astype(np.int32) + 10 * k, None)
              for k in range(4)]
    checked = check_corrections(stacks, 2)
    assert len(checked) == 20 and checked.groups == [g for g in range(4) for _ in range(5)]
    train, val = split_by_region(checked, 0.25)
    assert len(val) == 5 and len(train) == 15
    assert all(v[1].max() < 10 for v in val) and all(t[1].min() >= 10 for t in train)
    # one stack alone: a strip of every plane (the same rows of each), never a whole plane
    one = [(rng.random((5, 160, 160)), rng.integers(0, 4, (5, 160, 160)).astype(np.int32), None)]
    train, val = split_by_region(check_corrections(one, 2), 0.25)
    assert len(val) == 5 and all(v[0].shape == (64, 160) for v in val)
    assert all(t[0].shape == (96, 160) for t in train)


def test_error_map_marks_missed_merged_and_invented_objects():
    from napari_unet.training.focus import error_map

    truth = np.zeros((20, 40), np.int32)
    truth[2:8, 2:8] = 1  # found
    truth[2:8, 12:18] = 2  # missed
    truth[12:18, 2:8], truth[12:18, 8:14] = 3, 4  # merged into one prediction
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 7
    pred[12:18, 2:15] = 8  # IoU 36/78 with each
    pred[12:18, 30:36] = 9  # invented
    wrong = error_map(truth, pred)
    assert not wrong[2:8, 2:8].any() and wrong[2:8, 12:18].all() and wrong[12:18, 2:15].all()
    assert wrong[12:18, 30:36].all() and wrong.sum() == 36 + 78 + 36
    reviewed = np.zeros(truth.shape, bool)
    reviewed[:, :20] = True
    assert not error_map(truth, pred, reviewed)[:, 20:].any()


def test_patches_go_where_the_focus_is(nuclei_pairs):
    """focus_bias 1: every patch contains a focus pixel (here one corner of the image)."""
    image, labels = nuclei_pairs[0][:2]
    im = prepare_image(image, labels, DEFAULT_NORMALIZATION, 64)
    focus = np.zeros(labels.shape, bool)
    focus[:10, :10] = True
    im.set_focus(focus)
    sampler = PatchSampler([im], 64, np.random.default_rng(0), augment=False, focus_bias=1.0)
    for _ in range(20):
        corner = sampler._corner(im)
        assert corner[0] < 10 and corner[1] < 10


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_norm_keeps_batch_norm_statistics_while_the_weights_learn(nuclei_pairs, one_thread, freeze):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16))
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}
    weights = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(".weight")}
    assert stats and weights
    run_to_end(train_iter(net, nuclei_pairs[:2], nuclei_pairs[2:3], patch_size=64, batch_size=2, lr=1e-2,
                          epochs=1, steps_per_epoch=3, seed=0, device="cpu", freeze_norm=freeze))
    state = net.state_dict()
    moved = [k for k in stats if not torch.equal(state[k], stats[k])]
    assert (moved == []) == freeze, moved  # frozen: no statistic moved, not even across the validation
    assert all(not torch.equal(state[k], weights[k]) for k in weights)  # normalisation's scale learns too


def test_a_runs_resume_key_changes_with_the_default_patches(monkeypatch):
    """Settings that leave the patches to the defaults (None) stand for those defaults: a run
    interrupted before they change is not offered for resuming with other patches."""
    from napari_unet.finetune import FinetuneSettings
    from napari_unet.training import finetune
    from napari_unet.training.resume import run_key

    image = np.zeros((64, 64), np.float32)
    triples = [(image, np.zeros((64, 64), np.int32), None)]
    key = run_key("unet", triples, FinetuneSettings(), "run")
    assert run_key("unet", triples, FinetuneSettings(), "run") == key
    monkeypatch.setitem(finetune.PATCHES, 2, ((256, 256), 4))
    assert run_key("unet", triples, FinetuneSettings(), "run") != key
