"""What fine-tuning keeps: only a model better than its base (by default), never an unchecked one
unless validation was turned off, and short runs validate several times."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.finetune import FinetuneSettings, finetune_iter
from napari_unet.inference.predictor import run_to_end
from napari_unet.modelfile import load_model


@pytest.fixture(scope="module")
def crops(nuclei_sample):
    image, labels = (np.asarray(a) for a in nuclei_sample[:2])
    return [(image[:256, :256], labels[:256, :256], None), (image[256:, 256:], labels[256:, 256:], None)]


def _settings(**kwargs):
    return FinetuneSettings(**{"minutes": None, "epochs": 1, "steps_per_epoch": 2, "patch_size": 64,
                               "batch_size": 1, "device": "cpu", "augment": False, **kwargs})


def test_a_model_no_better_than_its_base_is_not_saved(crops, make_random_model, tmp_path, one_thread,
                                                      monkeypatch):
    from napari_unet.training import basescore

    real, bars = basescore.score_base, []

    def score_base(*args, **kwargs):  # the real scoring, and an unbeatable base (AP@0.5 1 after tuning)
        score = real(*args, **kwargs)
        bars.append(score.bar)
        return replace(score, bar=1.0 if kwargs["tune"] else None)

    monkeypatch.setattr(basescore, "score_base", score_base)
    monkeypatch.setattr(basescore, "base_postprocess", lambda *args: (None, 0.5, 0.5))  # its own settings win
    base = make_random_model("keep-base")
    settings = _settings(epochs=2, steps_per_epoch=1)
    result = run_to_end(finetune_iter(str(base), crops, settings, out_dir=tmp_path, name="same"))
    # the base's bar is its best AP@0.5 over the post-processing grid, at least its own settings' score
    assert bars[0] >= result.baseline["ap50"]
    assert result.steps == 2 and result.metrics and result.path is None and not list(tmp_path.iterdir())
    best = max(result.metrics["ap50"], result.tuned_ap50)
    assert result.discarded.startswith(f"not saved: its validation AP@0.5 {best:.3f} is not above ")
    assert result.discarded.endswith(", the base model's 1.000 plus one held-out object")
    kept = run_to_end(finetune_iter(str(base), crops, _settings(only_if_better=False), out_dir=tmp_path,
                                    name="kept"))
    assert kept.path == tmp_path / "kept.safetensors" and kept.discarded == ""
    card = load_model(kept.path).config["card"]
    assert "Validation AP@0.5 on held-out regions" in card and "nan" not in card


def test_nothing_to_hold_out_is_refused_unless_validation_is_off(crops, make_random_model, tmp_path, one_thread):
    base = make_random_model("keep-base-2")
    small = [(crops[0][0][:100, :100], crops[0][1][:100, :100], None)]  # one image, too small for a strip
    with pytest.raises(ValueError, match="Nothing can be held out.*turn validation off"):
        next(finetune_iter(str(base), small, _settings(), out_dir=tmp_path, name="refused"))
    assert not list(tmp_path.iterdir())
    result = run_to_end(finetune_iter(str(base), small, _settings(validate=False), out_dir=tmp_path, name="free"))
    assert result.path is not None and result.metrics == {} and result.baseline == {}
    config = load_model(result.path).config
    assert "Not validated: validation was turned off" in config["card"] and "nan" not in config["card"]
    assert config["provenance"]["val_regions"] == 0


def test_a_short_timed_run_validates_at_least_three_times(crops, make_random_model, tmp_path, one_thread):
    """With a time budget the validation comes every epoch and at least every quarter of the budget."""
    base = make_random_model("keep-base-3")
    settings = _settings(epochs=None, minutes=0.1, steps_per_epoch=100_000, only_if_better=False)
    result = run_to_end(finetune_iter(str(base), crops, settings, out_dir=tmp_path, name="short"))
    assert result.steps < 100_000 and len(result.history) >= 3


def test_focus_on_the_base_models_errors_trains_and_is_recorded(crops, make_random_model, tmp_path, one_thread,
                                                               monkeypatch):
    from napari_unet.training import trainer

    seen = {}
    real = trainer.train_iter

    def train_iter(*args, **kwargs):
        seen.update(kwargs)
        if len(args) > 3:  # the trainer's settings object
            seen.update(vars(args[3]))
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(trainer, "train_iter", train_iter)
    monkeypatch.setattr("napari_unet.training.train_iter", train_iter)
    base = make_random_model("focus-base")
    result = run_to_end(finetune_iter(str(base), crops, _settings(focus=0.5, only_if_better=False),
                                      out_dir=tmp_path, name="focused"))
    assert result.path is not None and seen["focus_bias"] == 0.5
    maps = seen["focus_maps"]
    assert len(maps) == 2 and all(m.dtype == bool and m.any() for m in maps)  # a random base misses objects
    assert load_model(result.path).config["provenance"]["settings"]["focus"] == 0.5


def test_2d_fine_tuning_defaults_to_batches_of_8_patches_of_128_px(crops, make_random_model, tmp_path, one_thread,
                                                                    monkeypatch):
    """Twice the steps of 4 patches of 256 px in the same minutes (benchmarks/README.md); what trained
    is recorded; a size given is kept; 3D models keep 4 patches of 16 x 64 x 64."""
    from napari_unet.training import trainer

    seen, real = [], trainer.train_iter

    def train_iter(net, train, val, settings, **kwargs):
        seen.append((settings.patch_size, settings.batch_size))
        return (yield from real(net, train, val, settings, **kwargs))

    monkeypatch.setattr(trainer, "train_iter", train_iter)
    defaults = FinetuneSettings()
    assert defaults.patches(2) == ((128, 128), 8) and defaults.patches(3) == ((16, 64, 64), 4)
    assert FinetuneSettings(patch_size=96, batch_size=2).patches(2) == ((96, 96), 2)
    assert FinetuneSettings(patch_size=96.0).patches(2) == ((96, 96), 8)
    assert FinetuneSettings(patch_size=(16, 32, 48)).patches(3) == ((16, 32, 48), 4)
    settings = _settings(patch_size=None, batch_size=None, steps_per_epoch=1, only_if_better=False)
    result = run_to_end(finetune_iter(str(make_random_model("patch-base")), crops, settings, out_dir=tmp_path,
                                      name="patches"))
    assert seen == [((128, 128), 8)] and result.steps == 1
    provenance = load_model(result.path).config["provenance"]
    assert provenance["patch_size"] == [128, 128] and provenance["batch_size"] == 8


def test_the_base_with_tuned_post_processing_is_kept_when_fine_tuning_does_not_beat_it(
        crops, make_random_model, tmp_path, one_thread, monkeypatch):
    """The base model's weights, unchanged, with the post-processing that scored best on the
    held-out part: better for these images than the base as it was and than the fine-tuned weights."""
    import torch

    from napari_unet.training import basescore

    real, seen = basescore.score_base, []
    tuned = {"threshold": 0.6, "min_size": 8, "split_touching": False, "split_depth": 1.0}

    def score_base(*args, **kwargs):  # the base scores 1.0 (unbeatable)
        seen.append([labels.shape for _, labels in args[1]])  # the held-out regions
        return replace(real(*args, **kwargs), bar=1.0)

    def base_postprocess(net, regions, *args):  # `tuned` beats its own settings on all the reviewed regions
        seen.append([labels.shape for _, labels in regions])
        return dict(tuned), 0.25, 1.0

    monkeypatch.setattr(basescore, "score_base", score_base)
    monkeypatch.setattr(basescore, "base_postprocess", base_postprocess)
    base = make_random_model("keep-base-4")
    result = run_to_end(finetune_iter(str(base), crops, _settings(epochs=2, steps_per_epoch=1), out_dir=tmp_path,
                                      name="base-tuned"))
    assert result.weights == "base" and result.path == tmp_path / "base-tuned.safetensors"
    # a strip of each crop is held out; the post-processing is chosen on both whole crops
    assert seen == [[(64, 256)] * 2, [(256, 256)] * 2]
    assert result.postprocess == tuned and result.tuned_ap50 == 1.0
    assert result.discarded.startswith("the fine-tuned weights did not beat the base model: validation AP@0.5 ")
    assert ("Saved the base model's weights with post-processing chosen on all the reviewed regions (AP@0.5 1.000 "
            "there, 0.250 with its own)") in result.discarded
    saved, original = load_model(result.path), load_model(base)
    assert saved.postprocess == tuned and saved.config["provenance"]["weights"].startswith("the base model's")
    for key, value in original.net.state_dict().items():
        torch.testing.assert_close(saved.net.state_dict()[key], value)
    assert "base model's weights, unchanged" in saved.config["card"]


@pytest.mark.parametrize("tuned", [{"threshold": 0.5, "min_size": 8, "split_touching": True}, None])
def test_the_kept_base_is_for_objects_of_the_corrections_size(crops, make_random_model, tmp_path, one_thread,
                                                               monkeypatch, tuned):
    """A base that estimates the objects' size in every image was scored (and its post-processing
    tuned) at the size of the corrected objects: the saved file is for objects of that size."""
    from napari_unet.training import basescore
    from napari_unet.modelfile import make_config, save_model
    from napari_unet.scaling import median_diameter

    real, real_choice, scores = basescore.score_base, basescore.base_postprocess, []

    def score_base(*args, **kwargs):  # the base is unbeatable
        return replace(real(*args, **kwargs), bar=1.0)

    def base_postprocess(*args):  # with tuned post-processing or its own (None)
        chosen = (tuned,) + real_choice(*args)[1:]
        scores.append(chosen)
        return chosen

    monkeypatch.setattr(basescore, "score_base", score_base)
    monkeypatch.setattr(basescore, "base_postprocess", base_postprocess)
    random = load_model(make_random_model("sized-base"))
    base = save_model(tmp_path / f"sized-{tuned is None}.safetensors", random.net,
                      make_config(random.net, "unet", "binary", random.normalization, {}, "# sized", 16.0))
    assert load_model(base).estimates_size
    result = run_to_end(finetune_iter(str(base), crops, _settings(epochs=1), out_dir=tmp_path,
                                      name=f"kept-{tuned is None}"))
    assert result.weights == "base" and result.path is not None  # saved even when only the size is new
    saved = load_model(result.path)
    diameter = float(np.median([median_diameter(lab) for _, lab, _ in crops]))
    assert saved.object_diameter == 16.0 and not saved.estimates_size
    assert saved.image_object_diameter == pytest.approx(diameter, abs=0.01)
    assert f"objects of {diameter:.0f} px across" in saved.config["card"]
    if tuned is None:  # the base's own settings are kept, with their own score
        assert saved.postprocess == load_model(base).postprocess and result.postprocess == saved.postprocess
        assert result.tuned_ap50 == scores[0][1]  # its own settings' score on all the reviewed regions
        assert "its own post-processing (AP@0.5" in result.discarded
        assert "its own post-processing (no other settings beat it" in saved.config["card"]
    else:
        assert saved.postprocess["threshold"] == tuned["threshold"]


def test_a_gain_of_one_held_out_object_or_less_is_not_enough(crops, make_random_model, tmp_path, one_thread,
                                                              monkeypatch):
    from napari_unet.training import basescore

    labels = np.zeros((64, 64), np.int32)
    for i in range(20):
        labels[(i // 5) * 16:(i // 5) * 16 + 8, (i % 5) * 12:(i % 5) * 12 + 8] = i + 1
    val = [(np.zeros((64, 64)), labels[:32]), (np.zeros((64, 64)), labels[32:])]
    assert basescore.min_gain(FinetuneSettings(), val) == pytest.approx(1 / 20)
    assert basescore.min_gain(FinetuneSettings(min_gain=0.0), val) == 0.0
    assert basescore.min_gain(FinetuneSettings(), []) == 0.0
    # the margin decides: the same run is kept with none, and not with one no model can clear
    base = make_random_model("margin-base")
    real = basescore.score_base

    def score_base(*args, **kwargs):  # a base any model beats (-1), unless the margin is out of reach
        return replace(real(*args, **kwargs), bar=-1.0)

    monkeypatch.setattr(basescore, "score_base", score_base)
    monkeypatch.setattr(basescore, "base_postprocess", lambda *args: (None, 0.5, 0.5))  # its own settings win
    monkeypatch.setattr(basescore, "min_gain", lambda settings, val: 0.0 if settings.min_gain == 0 else 5.0)
    kept = run_to_end(finetune_iter(str(base), crops, _settings(min_gain=0.0, epochs=1), out_dir=tmp_path,
                                    name="free"))
    refused = run_to_end(finetune_iter(str(base), crops, _settings(epochs=1), out_dir=tmp_path, name="strict"))
    assert kept.discarded == "" and kept.path is not None
    assert refused.discarded.startswith("not saved") \
        and "is not above 4.000, the base model's -1.000 plus one held-out object" in refused.discarded


@pytest.mark.parametrize("gain,replaced", [(0.03, False), (0.08, True)])
def test_the_bases_post_processing_is_chosen_on_all_reviewed_regions_by_more_than_one_object(monkeypatch, gain,
                                                                                          replaced):
    """The bar for fine-tuned weights is the base's best on the held-out regions (both choose their
    settings there); what the base keeps is chosen on all the reviewed regions (it trained on none),
    and replaces its own settings (chosen on many images) only by more than the margin."""
    from napari_unet.inference import postprocess
    from napari_unet.training import basescore, validation

    labels = np.zeros((64, 64), np.int32)
    labels[8:24, 8:24], labels[36:56, 30:50] = 1, 2
    probs = (labels > 0).astype(np.float32)[None]
    predicted = []

    def held_out_probabilities(net, pairs, *args):
        predicted.append([name for name, _ in pairs])
        return iter([(probs, lab) for _, lab in pairs])

    monkeypatch.setattr(validation, "held_out_probabilities", held_out_probabilities)
    own = {"threshold": 0.5, "min_size": 16, "split_touching": True, "split_depth": 1.0}
    strips_best, all_best = {**own, "threshold": 0.6}, {**own, "threshold": 0.4}

    def choose(items, target, stop=None):  # the strips alone: 0.9; all regions: own (1.0) plus the gain
        return (all_best, [(all_best, 1.0 + gain)]) if len(items) == 2 else (strips_best, [(strips_best, 0.9)])

    monkeypatch.setattr(postprocess, "choose_postprocess", choose)
    score = basescore.score_base(None, [("strip", labels)], {}, "cpu", own, "binary", None, tune=True)
    assert predicted == [["strip"]] and score.metrics["ap50"] == 1.0
    assert score.bar == 1.0  # its own settings beat the strips' grid there
    chosen = basescore.base_postprocess(None, [("strip", labels), ("rest", labels)], {}, "cpu", own, "binary", None,
                                        0.05)
    assert predicted[-1] == ["strip", "rest"]
    assert chosen == ((all_best if replaced else None), 1.0, pytest.approx(1.0 + gain))
    untuned = basescore.score_base(None, [("strip", labels)], {}, "cpu", own, "binary", None, tune=False)
    assert untuned.bar is None and len(predicted) == 3


def test_a_run_whose_weights_win_never_scores_the_base_on_all_regions(crops, make_random_model, tmp_path,
                                                                      one_thread, monkeypatch):
    """Choosing the base's post-processing on all the corrections takes seconds: only a base that won waits for it."""
    from napari_unet.training import basescore

    real, calls = basescore.score_base, []
    monkeypatch.setattr(basescore, "score_base", lambda *a, **k: replace(real(*a, **k), bar=-1.0))  # any model wins
    monkeypatch.setattr(basescore, "base_postprocess", lambda *args: calls.append(1))
    result = run_to_end(finetune_iter(str(make_random_model("winner-base")), crops, _settings(min_gain=0.0),
                                      out_dir=tmp_path, name="winner"))
    assert result.weights == "fine-tuned" and result.path is not None and calls == []


def test_with_no_fully_reviewed_region_the_base_is_scored_on_the_held_out_part(crops, make_random_model, tmp_path,
                                                                               one_thread, monkeypatch):
    """A hole in every reviewed area (objects found there would count as false): the base's
    post-processing is chosen on the fully reviewed held-out strips; a cancel then saves nothing
    and says so."""
    import threading

    from napari_unet.jobs import PredictionCancelled
    from napari_unet.training import basescore

    holed = []
    for image, labels, _ in crops:
        reviewed = np.ones(labels.shape, bool)
        reviewed[10:20, 10:20] = False
        holed.append((image, labels, reviewed))
    real, seen, stop = basescore.score_base, [], threading.Event()
    monkeypatch.setattr(basescore, "score_base", lambda *a, **k: replace(real(*a, **k), bar=1.0))  # unbeatable

    def base_postprocess(net, regions, *args):
        seen.append([labels.shape for _, labels in regions])
        if len(seen) == 2:  # the second run: the user cancels while the base is scored
            stop.set()
            raise PredictionCancelled()
        return {"threshold": 0.6, "min_size": 8, "split_touching": True, "split_depth": 1.0}, 0.5, 0.9

    monkeypatch.setattr(basescore, "base_postprocess", base_postprocess)
    base = make_random_model("holed-base")
    events = []
    first = run_to_end(finetune_iter(str(base), holed, _settings(), out_dir=tmp_path, name="holed"), events.append)
    phases = [e.phase for e in events if e.phase]  # what the status says while the seconds after training pass
    assert phases == ["choosing the post-processing on the held-out regions…",
                      "the fine-tuned weights did not beat the base model: choosing its post-processing on the "
                      "reviewed regions…"]
    assert events[-1].phase and events[-1].step == first.steps and first.stopped != "stopped by user"
    assert seen == [[(64, 256)] * 2] and first.weights == "base" and first.path == tmp_path / "holed.safetensors"
    assert "chosen on the held-out regions (AP@0.5 0.900 there, 0.500 with its own)" in first.discarded
    assert "chosen on the held-out regions" in load_model(first.path).config["card"]
    second = run_to_end(finetune_iter(str(base), holed, _settings(), out_dir=tmp_path, name="holed-2", stop=stop))
    assert second.path is None and [p.name for p in tmp_path.iterdir()] == ["holed.safetensors"]
    assert second.discarded.endswith("; stopped while the base model's post-processing was chosen")
    assert second.stopped == "stopped by user"


def test_scores_that_differ_are_written_so():
    from napari_unet.training.basescore import distinct as _distinct

    assert _distinct(0.96149, 0.96151, 0.9) == ["0.961", "0.962", "0.900"]  # the order survives rounding
    assert _distinct(0.9621, 0.9615) == ["0.9621", "0.9615"]  # not "0.962 is not above 0.962"
    assert _distinct(0.96151, 0.96149) == ["0.962", "0.961"]
    assert _distinct(0.961549, 0.96151) == ["0.96155", "0.96151"]
    assert _distinct(0.5, 0.25) == ["0.500", "0.250"] and _distinct(0.5, 0.5) == ["0.500", "0.500"]


@pytest.mark.parametrize("only_if_better", [True, False])
def test_a_cancel_while_the_post_processing_is_tuned_stops_there(crops, make_random_model, tmp_path, one_thread,
                                                                 monkeypatch, only_if_better):
    """Cancel after training, while the fine-tuned model's post-processing is chosen: nothing more
    runs (not the base's own choice either), the result and the saved card say the user stopped."""
    import threading

    from napari_unet.jobs import PredictionCancelled
    from napari_unet.training import basescore, validation

    stop, chosen = threading.Event(), []
    real = basescore.score_base
    monkeypatch.setattr(basescore, "score_base",  # an unbeatable base, when it is a bar
                        lambda *a, **k: replace(real(*a, **k), bar=1.0 if k["tune"] else None))

    def tune_postprocess(*args, **kwargs):
        stop.set()
        raise PredictionCancelled()

    monkeypatch.setattr(validation, "tune_postprocess", tune_postprocess)
    monkeypatch.setattr(basescore, "base_postprocess", lambda *a: chosen.append(1))
    events = []
    result = run_to_end(finetune_iter(str(make_random_model("tuned-base")), crops,
                                      _settings(only_if_better=only_if_better), out_dir=tmp_path, name="cut",
                                      stop=stop), events.append)
    assert result.stopped == "stopped by user" and chosen == [] and result.steps > 0
    assert [e.phase for e in events if e.phase] == ["choosing the post-processing on the held-out regions…"]
    if only_if_better:  # the base won, and the user stopped before its post-processing was chosen: nothing saved
        assert result.path is None and result.discarded.startswith("not saved")
    else:  # the fine-tuned weights are kept (with the base's post-processing), and their card says why they stopped
        assert result.path is not None and load_model(result.path).config["provenance"]["stopped"] == "stopped by user"


def test_a_patch_size_given_as_one_int_reaches_the_trainer_as_given_and_the_card_per_axis(crops, make_random_model,
                                                                                          tmp_path, one_thread,
                                                                                          monkeypatch):
    """The trainer checks the user's size itself (its message names the int); the card lists one size per axis."""
    from napari_unet.training import trainer

    seen, real = [], trainer.train_iter

    def train_iter(net, train, val, settings, **kwargs):
        seen.append(settings.patch_size)
        return (yield from real(net, train, val, settings, **kwargs))

    monkeypatch.setattr(trainer, "train_iter", train_iter)
    settings = _settings(patch_size=64, batch_size=2, steps_per_epoch=1, only_if_better=False)
    result = run_to_end(finetune_iter(str(make_random_model("int-patch-base")), crops, settings, out_dir=tmp_path,
                                      name="int-patch"))
    assert seen == [64]
    assert load_model(result.path).config["provenance"]["patch_size"] == [64, 64]
