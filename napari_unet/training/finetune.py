"""Fine-tune a model on the user's corrections and keep the result (no Qt).

The engine behind the Fine-tune widget, ``napari-unet train`` and Python: corrected triples
``(image, labels, reviewed)`` are checked and split into training and validation *by region*
(:mod:`.corrections`), the base model is scored on them (:mod:`.basescore`) and trained with :func:`~napari_unet.training.trainer.train_iter`
(on images resized so that their objects reach the network's object size), every better
validation is checkpointed atomically into the user's model folder, and the final file carries
a model card (:mod:`.card`). :func:`finetune_iter` is a generator of
:class:`~napari_unet.training.trainer.TrainingEvent` that can be stopped between steps; its
return value is a :class:`FinetuneResult`. :class:`FinetuneSettings` holds every default.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from ..catalog import SUFFIX, bundled_models, known_models, user_model_dir
from ..trainingset import safe_name
from . import basescore
from .corrections import DEFAULT_OBJECT_DIAMETER, PreparedCorrections, check_corrections, split_by_region, training_scale

__all__ = ["DEFAULT_LOSS", "DEFAULT_OBJECT_DIAMETER", "LOSS_PRESETS", "FinetuneResult", "FinetuneRun", "FinetuneSettings",
           "finetune_iter", "output_path", "split_by_region", "training_scale", "unique_model_name", "weight_map_params"]

#: Loss presets the widget offers: label -> (loss spec, weight map). The weight map is the U-Net
#: paper's: ``"border"`` its separation term alone (w0 exp(-(d1 + d2)^2 / 2 sigma^2), w_c = 1),
#: ``"full"`` with the class-balance term w_c too, None none. The default is the border term
#: with CE + Dice: w_c lowered AP in every measurement (benchmarks/README.md).
LOSS_PRESETS = {
    "border-weighted CE + Dice": ("ce+dice", "border"),
    "weight-map CE (U-Net paper)": ("ce", "full"),
    "weight-map CE + Dice": ("ce+dice", "full"),
    "CE + Dice": ("ce+dice", None),
    "plain CE": ("ce", None),
    "U-Net 3+ hybrid (focal + MS-SSIM + IoU)": ("hybrid", None),
}
DEFAULT_LOSS = "border-weighted CE + Dice"


def weight_map_params(kind: str | None, w0: float, sigma: float) -> dict | None:
    """The trainer's ``weight_map`` argument for a preset's weight-map kind."""
    if kind is None:
        return None
    return {"w0": w0, "sigma": sigma, "class_weights": "balanced" if kind == "full" else None}


#: fine-tuning's patch size and batch when none are given, by the network's dimensions. 2D: 8
#: patches of 128 px, half the pixels of the 4 of 256 px used before, so about twice the steps
#: fit in the same minutes (from nuclei-only weights on 3 Usiigaci frames, 5 CPU minutes on 2
#: cores, 3 seeds: 670-700 steps instead of 330-340, AP@0.5 0.672 against 0.620 on 8 other
#: frames, better on the held-out strips at every seed; benchmarks/README.md). 3D: 4 patches of
#: 16 x 64 x 64.
PATCHES = {2: ((128, 128), 8), 3: ((16, 64, 64), 4)}


@dataclass
class FinetuneSettings:
    """What to train and for how long. The defaults are tuned for a first run on a CPU: a
    visible gain in a few minutes (see the README's numbers on phase-contrast cells)."""

    minutes: float | None = 5.0  # wall-time budget (validation included)
    epochs: int | None = None  # or a number of epochs of ``steps_per_epoch`` steps
    loss: str = DEFAULT_LOSS  # a key of LOSS_PRESETS or a loss spec ("ce+dice")
    w0: float = 10.0  # weight-map amplitude (the paper's w0)
    sigma: float = 5.0  # weight-map width, in pixels
    target: str | None = None  # "binary" / "boundary"; None keeps the base model's
    augment: bool = True  # flips, quarter turns, elastic deformation, scale, intensity, noise
    patch_size: int | tuple | None = None  # None: 128 px for 2D models, 16x64x64 for 3D ones (PATCHES)
    batch_size: int | None = None  # None: 8 for 2D models, 4 for 3D ones (PATCHES)
    lr: float = 3e-3  # fine-tuning a small pretrained net: 3e-3 gained +0.21 AP in 5 CPU min on Usiigaci (1e-3: +0.13)
    steps_per_epoch: int = 20
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.25  # of each image, as a strip, when there are fewer than ``whole_images_from``
    whole_images_from: int = 4  # with this many images or more, every 4th is held out whole; fewer: a strip of
    # each, so all train (3 Usiigaci frames: 0.630 +- 0.025 vs 0.609 +- 0.068, benchmarks/README.md)
    validate: bool = True  # hold out part of the corrections to score the model (False: all train, unchecked)
    only_if_better: bool = True  # keep the model only if it validates better than the base model
    min_gain: float | None = None  # by how much (AP@0.5) it must; None: one held-out object's worth (see finetune_iter)
    focus: float = 0.0  # share of patches placed on objects the base model got wrong (missed, merged, invented)
    object_diameter: float | None = None  # px the corrections' objects are resized to (None: the base model's;
    # when it declares none, objects over DEFAULT_OBJECT_DIAMETER are shrunk to it; 2D models). Usiigaci cells of 69 px trained at half size:
    # AP@0.5 0.72 vs 0.62 at full size in the same 5 minutes (benchmarks/README.md)
    resize: bool = True  # False: train at the images' own size, whatever the objects' size
    patience: int | None = None  # stop after this many validations without a better AP@0.5 (None: never)
    weights: str | None = None  # weight map: None = the loss preset's; "border", "full" or "none"
    freeze_norm: bool = False  # keep the base's batch-norm statistics (their scale and shift still train)

    def loss_spec(self) -> tuple[str, str | None]:
        """``(loss spec, weight-map kind)``: a preset's, or a plain loss spec with no weight map."""
        if self.loss in LOSS_PRESETS:
            return LOSS_PRESETS[self.loss]
        return self.loss, None

    def weight_map(self) -> dict | None:
        """The trainer's ``weight_map`` argument (None: unweighted cross-entropy)."""
        if self.weights is not None and self.weights not in ("border", "full", "none"):
            raise ValueError(f"Unknown weight map {self.weights!r}: choose border, full or none.")
        kind = self.loss_spec()[1] if self.weights is None else (None if self.weights == "none" else self.weights)
        return weight_map_params(kind, self.w0, self.sigma)

    def patches(self, spatial_dims: int, divisor: Sequence[int] | None = None) -> tuple[tuple[int, ...], int]:
        """``(patch shape, batch size)`` for a network of ``spatial_dims``, the shape one int per
        axis: the settings' (a single ``patch_size`` on every axis), else :data:`PATCHES`' (rounded
        up to a multiple of the network's ``divisor`` when given; the trainer checks the settings')."""
        patch, batch = PATCHES[spatial_dims]
        if divisor is not None:
            patch = tuple(-(-p // d) * d for p, d in zip(patch, divisor))
        if self.patch_size is not None:
            try:
                patch = tuple(int(p) for p in self.patch_size)
            except TypeError:  # one size (an int, a float, a numpy scalar) for every axis
                patch = (int(self.patch_size),) * spatial_dims
        return patch, batch if self.batch_size is None else self.batch_size

    def train_settings(self, normalization: dict, target: str, postprocess: dict, focus: bool, net):
        """The trainer's settings (:class:`~.trainer.TrainSettings`) for this fine-tuning of ``net``
        (``focus``: the base model's error maps are given)."""
        from . import trainer

        patch_size, batch_size = self.patches(net.spatial_dims, net.size_divisor)
        if self.patch_size is not None:  # the user's size as given: the trainer checks it and its message names it
            patch_size = self.patch_size
        return trainer.TrainSettings(
            patch_size=patch_size, batch_size=batch_size, lr=self.lr, epochs=self.epochs,
            minutes=self.minutes, steps_per_epoch=self.steps_per_epoch, seed=self.seed, normalization=normalization,
            device=self.device, weight_map=self.weight_map(), target=target, postprocess=postprocess,
            augment=self.augment, patience=self.patience, focus_bias=self.focus if focus else 0.0,
            freeze_norm=self.freeze_norm)


@dataclass
class FinetuneResult:
    """Where the fine-tuned model went and how it scored."""

    path: Path | None  # None when nothing was saved (stopped before the first validation)
    name: str
    metrics: dict  # best validation metrics
    baseline: dict  # the base model's validation metrics, on the same held-out regions
    stopped: str
    steps: int
    seconds: float
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # e.g. "Out of CUDA memory at step 12: continuing with batch size 2."
    postprocess: dict = field(default_factory=dict)  # the post-processing stored with the model
    tuned_ap50: float | None = None  # validation AP@0.5 with it (on the held-out regions; with the base's
    # weights kept, on all the reviewed regions, where its post-processing is chosen)
    best_step: int = 0  # the step of the best validation (of the saved weights)
    discarded: str = ""  # why the fine-tuned weights were not kept although training ran (not better than the base)
    weights: str = "fine-tuned"  # or "base": the saved file holds the base's weights (see FinetuneRun.keep_base)
    scale: float = 1.0  # the factor the corrections were resized by for training (see napari_unet.scaling)
    object_diameter: float | None = None  # the corrections' median object diameter, pixels
    resumed: bool = False  # the run went on from an interrupted one (the Fine-tune widget's resume)

    @property
    def gain(self) -> float | None:
        if not self.metrics or not self.baseline:
            return None
        return self.metrics.get("ap50", 0.0) - self.baseline.get("ap50", 0.0)


def unique_model_name(base: str) -> str:
    """``<base>-ft-<date>`` (with a number if taken) that is neither bundled nor a user model."""
    stem = f"{safe_name(base)}-ft-{dt.date.today():%Y%m%d}"
    taken = set(known_models())
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}-{i}", i + 1
    return name




def output_path(loaded, name: str | None, out_dir, path, overwrite: bool) -> tuple[Path, str]:
    """``(file, model name)`` of the model a run saves, after checking that it may be written:
    ``path`` when given, else ``<out_dir>/<name>.safetensors`` (a fresh name when None)."""
    if path is not None:  # an explicit file: its folder and name
        path = Path(path)
        path = path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)
        out_dir, name = path.parent, path.name[:-len(SUFFIX)]
    out_dir = Path(out_dir) if out_dir is not None else user_model_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"Cannot write models to {out_dir}: {exc.strerror}. Set NAPARI_UNET_MODEL_DIR to a "
                         "writable folder.") from None
    if path is None:
        name = safe_name(name) if name else unique_model_name(loaded.name or "model")
        path = out_dir / f"{name}{SUFFIX}"
    if path.exists() and not overwrite:
        raise ValueError(f"A model named {name!r} already exists ({path}): choose another name, or delete that "
                         "file first. Fine-tuning never overwrites a model.")
    if out_dir == user_model_dir() and name in bundled_models():
        raise ValueError(f"{name!r} is the name of a bundled model: choose another name for the fine-tuned model.")
    return path, name


def finetune_iter(base, triples: Sequence, settings: FinetuneSettings | None = None, *, name: str | None = None,
                  out_dir: str | Path | None = None, stop: threading.Event | None = None,
                  source: str = "", path: str | Path | None = None, overwrite: bool = False,
                  checkpoint: str | Path | None = None, resume: bool = False,
                  keep_unvalidated: bool = False) -> Iterator:
    """Fine-tune ``base`` (a model name, a path or a :class:`~napari_unet.modelfile.LoadedModel`)
    on ``triples`` of ``(image, labels, reviewed)`` and save the best model as
    ``<out_dir>/<name>.safetensors`` (default: the user's model folder, a fresh name), or as
    ``path`` when given (``overwrite``: an existing file there may be replaced, as
    ``napari-unet train -o`` does). The one training engine of the widget, the CLI and Python.

    ``checkpoint``: write the run's state there after every epoch; ``resume``: continue the run
    saved there (``settings.minutes`` / ``epochs`` count the whole run). ``keep_unvalidated``: a
    run stopped before its first validation still saves its last weights (the command line's
    Ctrl-C; the widget saves nothing then).

    Yields :class:`~napari_unet.training.trainer.TrainingEvent` (the first one, ``step=0``,
    carries the base model's validation score as ``val_metrics``; after training, events with a
    ``phase`` say what the next seconds are spent on: choosing the post-processing); returns a
    :class:`FinetuneResult`. Stopping (``stop.set()``) ends the run within about a second at any
    point (scoring the base model, a training step, a validation pass) and keeps the best model
    so far; nothing is saved when no validation has run yet. Neither the base model nor any other
    existing model file is ever overwritten: a ``name`` already taken is refused. A loss that
    turns NaN/Inf stops training, keeps the best model and says why in ``stopped``.

    With ``settings.only_if_better`` (the default) a model that does not validate better than the
    base model is not saved, not even as a checkpoint: both are judged by their best AP@0.5 over
    the post-processing grid on the same held-out regions. When the base wins and settings chosen
    on all the fully reviewed regions (none of which it trained on; within 2 megapixels) beat its
    own there by more than one object's worth (or ``settings.min_gain``), or it estimates object
    sizes (then made for the corrections' size), the base is saved instead: its weights,
    unchanged, with those settings or its own (``FinetuneResult.weights == "base"``);
    ``discarded`` says what happened. With
    ``settings.validate`` (the default) a training set from which nothing can be held out is refused before training, and so is a base
    that runs a BioImage.IO package's own network (``ValueError``; a package napari-unet exported
    is rebuilt as a napari-unet network and can be fine-tuned).
    """
    from ..jobs import PredictionCancelled
    from .trainer import TrainingEvent

    run = FinetuneRun(base, triples, settings or FinetuneSettings(), name, out_dir, path, overwrite, source, stop)
    if stop is not None and stop.is_set():
        return run.stopped_early()
    try:
        run.score_base()
        focus_maps = run.focus_maps()
    except PredictionCancelled:
        return run.stopped_early()
    yield TrainingEvent(0, 0, float("nan"), run.baseline.get("ap50"), 0.0, None,
                                validated=bool(run.baseline), val_metrics=run.baseline or None)
    result = yield from run.train(focus_maps, checkpoint, resume)
    return (yield from run.finish(result, keep_unvalidated))


def _refuse_package_network(loaded) -> None:
    """``ValueError`` for a base that runs a BioImage.IO package's own network (its TorchScript or its
    own code: frozen, and not in the registry that a saved model is rebuilt from)."""
    from ..bioimageio import PACKAGE_ARCHITECTURE

    if loaded.config.get("architecture") == PACKAGE_ARCHITECTURE:
        raise ValueError("a BioImage.IO package's own network cannot be fine-tuned here; "
                         f"{loaded.name or 'this package'!r} runs the package's own weights, which napari-unet "
                         "predicts with but can neither train nor save as a model file. Fine-tune a napari-unet "
                         "model: a bundled one, a .safetensors file, or a package napari-unet exported.")


class FinetuneRun:
    """One fine-tuning run: the base model, the corrections made ready, the bar to beat, the saves."""

    def __init__(self, base, triples, settings: FinetuneSettings, name, out_dir, path, overwrite, source, stop):
        from ..modelfile import LoadedModel, load_model
        from .losses import SegmentationLoss

        self.started = time.perf_counter()
        self.settings, self.source, self.stop = settings, source, stop
        self.loaded = base if isinstance(base, LoadedModel) else load_model(base)
        _refuse_package_network(self.loaded)
        self.net = copy.deepcopy(self.loaded.net)  # the caller's model (maybe cached by a widget) stays as it is
        checked = check_corrections(triples, self.net.spatial_dims)
        self.target = settings.target or self.loaded.target
        self.spec = settings.loss_spec()[0]
        self.loss = SegmentationLoss.from_spec(self.spec)
        self.weight_map = settings.weight_map()
        self.path, self.name = output_path(self.loaded, name, out_dir, path, overwrite)
        self.data = PreparedCorrections.split(settings, self.loaded, checked)
        self.checked = checked
        self.postprocess, self.tuned = self.loaded.postprocess, None
        self.base = basescore.BaseScore({})  # the base scored on the corrections (score_base)
        self.margin = basescore.min_gain(settings, self.data.val)
        self.saved = None

    def stopped_early(self) -> FinetuneResult:
        return FinetuneResult(None, self.name, {}, {}, "stopped by user", 0, time.perf_counter() - self.started)

    @property
    def baseline(self) -> dict:
        """The base model's metrics on the held-out part, with its own post-processing."""
        return self.base.metrics

    def score_base(self) -> None:
        if self.data.val and self.target == self.loaded.target:
            self.base = basescore.score_base(self.net, self.data.base_val, self.loaded.normalization,
                                             self.settings.device, self.postprocess, self.target, self.stop,
                                             tune=self.settings.only_if_better)

    def choose_base_postprocess(self) -> bool:
        """For a base that beat its fine-tuned weights: choose its post-processing on all the fully
        reviewed regions, or on the held-out part when none is (seconds: 6 s for 3 Usiigaci frames
        on 2 CPU cores, about 22 s for the 2-megapixel budget; only then, so a run whose weights win
        does not wait for it). False when stopped meanwhile."""
        from ..jobs import PredictionCancelled

        whole = self.data.base_regions(self.checked)
        regions = whole or self.data.base_val
        try:
            postprocess, own_all, best_all = basescore.base_postprocess(
                self.loaded.net, regions, self.loaded.normalization, self.settings.device, self.loaded.postprocess,
                self.target, self.stop, basescore.min_gain(self.settings, regions))
        except PredictionCancelled:
            return False
        self.base = replace(self.base, postprocess=postprocess, own_all=own_all, best_all=best_all,
                            regions="all the reviewed regions" if whole else "the held-out regions")
        return True

    def focus_maps(self):
        """Where the base model is wrong, for the sampler (with ``settings.focus``), or None."""
        if not (self.settings.focus > 0 and self.target == self.loaded.target):
            return None
        from . import validation

        return validation.error_maps(self.net, self.data.train, self.loaded.normalization, self.settings.device,
                                     self.postprocess, self.target, stop=self.stop)

    def beats_base(self, score: float | None) -> bool:
        return self.base.bar is None or (score is not None and score > self.base.bar + self.margin)

    def save(self, weights_net, config) -> Path:
        from ..modelfile import save_model

        try:
            return save_model(self.path, weights_net, config)
        except OSError as exc:  # a full disk, a folder made read-only since the start
            raise ValueError(f"Cannot save the model to {self.path}: {exc.strerror or exc}. Nothing was "
                             "overwritten (a file already there is kept as it was).") from None

    def config(self, stopped, metrics, best_step, steps, seconds, weights_net=None) -> dict:
        from .card import finetuned_config

        return finetuned_config(self, stopped, metrics, best_step, steps, seconds, weights_net)

    def train(self, focus_maps, checkpoint, resume):
        """Train (a generator of the trainer's events); better validations are saved as they come, so a
        crash later still leaves the best model so far. Returns the trainer's result."""
        from ..modelfile import TARGETS

        self.net.train()
        if self.target != self.loaded.target:
            self.net.set_out_channels(len(TARGETS[self.target]))
        settings = self.settings.train_settings(self.loaded.normalization, self.target, self.postprocess,
                                                net=self.net,
                                                focus=focus_maps is not None)
        from . import trainer

        gen = trainer.train_iter(self.net, self.data.train, self.data.val, settings, stop=self.stop, loss=self.loss,
                                 checkpoint=checkpoint, resume=resume, focus_maps=focus_maps)
        while True:
            try:
                event = next(gen)
            except StopIteration as done:
                return done.value
            if event.improved and self.beats_base((event.val_metrics or {}).get("ap50")):
                self.saved = self.save(self.net, self.config("checkpoint", event.val_metrics or {}, event.step,
                                                             event.step, 0.0))
            yield event

    def finish(self, result, keep_unvalidated: bool):
        """Tune the post-processing, decide what is kept (fine-tuned weights, the base's, nothing), save it.
        A generator: yields a phase event before each part that takes seconds; returns the result."""
        from ..jobs import PredictionCancelled
        from .trainer import TrainingEvent

        def phase(text):
            return TrainingEvent(result.steps, 0, float("nan"), None, 0.0, None, phase=text)

        data, stop = self.data, self.stop
        stopped_by_user = stop is not None and stop.is_set()
        if result.metrics and data.val and not stopped_by_user:
            yield phase("choosing the post-processing on the held-out regions…")
            try:  # the post-processing for this model, chosen on the held-out regions (a few seconds)
                from . import validation

                tuned, table = validation.tune_postprocess(
                    self.net.eval(), data.val, self.loaded.normalization, self.settings.device, self.target,
                    stop=stop)
                score = round(max(score for _, score in table), 4)
                # the grid's best only where it beats the settings validated during training (its
                # minimum sizes follow the objects' size and may miss those settings)
                if score > result.metrics["ap50"]:
                    self.postprocess, self.tuned = tuned, score
                else:
                    self.postprocess, self.tuned = self.loaded.postprocess, round(result.metrics["ap50"], 4)
            except PredictionCancelled:
                self.postprocess, stopped_by_user = self.loaded.postprocess, True
        if stopped_by_user and not result.stopped.startswith("non-finite"):  # also after the last step
            result = replace(result, stopped="stopped by user")
        discarded, best = "", None
        if result.metrics:
            best = max(result.metrics["ap50"], self.tuned if self.tuned is not None else -1.0)
            if not self.beats_base(best):
                discarded = f"not saved: its validation AP@0.5 {self.short_of(best)}"
                self.postprocess = self.loaded.postprocess
        # without validation the last state is all there is: worth keeping unless nothing was trained
        # or the loss broke (the weights that made it break are suspect)
        unvalidated_ok = (not data.val or keep_unvalidated) and result.steps > 0 \
            and not result.stopped.startswith("non-finite")
        weights = "fine-tuned"
        if (result.metrics and not discarded) or (not result.metrics and unvalidated_ok):
            self.saved = self.save(self.net.eval(), self.config(result.stopped, result.metrics, result.best_step,
                                                                result.steps, result.seconds))
        elif discarded and not stopped_by_user:  # the base won: saved if its settings or its size are new
            yield phase("the fine-tuned weights did not beat the base model: "
                        "choosing its post-processing on the reviewed regions…")
            if not self.choose_base_postprocess():
                discarded += "; stopped while the base model's post-processing was chosen"
                result = replace(result, stopped="stopped by user")
            elif self.base.postprocess is not None or (self.loaded.estimates_size and data.diameter):
                discarded, weights = self.keep_base(result, best), "base"
        return FinetuneResult(self.saved, self.name, result.metrics, self.baseline, result.stopped, result.steps,
                              result.seconds, result.history, list(result.warnings), dict(self.postprocess),
                              self.tuned, result.best_step, discarded, weights, data.scale, data.diameter)

    def short_of(self, best: float) -> str:
        """How ``best`` (a validation AP@0.5) fell short of the base: "0.912 is not above 0.931, the base
        model's 0.913 plus one held-out object", with the digits that tell the numbers apart."""
        need = self.base.bar + self.margin
        shown_best, shown_need, shown_bar = basescore.distinct(best, need, self.base.bar)
        if not self.margin:
            return f"{shown_best} is not above the base model's {shown_bar}"
        return f"{shown_best} is not above {shown_need}, the base model's {shown_bar} plus {self.gain_text()}"

    def gain_text(self, held_out: bool = True) -> str:
        """The margin in words: one object's worth (of the held-out part, or of all the reviewed regions)."""
        if self.settings.min_gain is not None:
            return "the gain asked for"
        return "one held-out object" if held_out else "one object"

    def keep_base(self, result, best: float) -> str:
        """Save the base's weights with the post-processing chosen on all the reviewed regions (and, for
        a base that estimates the objects' size, made for the corrections' size): they beat the
        fine-tuned weights, so they are the best model for these images. Returns what the status says."""
        loaded, diameter, base = self.loaded, self.data.diameter, self.base
        own = base.postprocess is None  # other settings did not beat the base's own by more than one object
        self.postprocess = dict(loaded.postprocess if own else base.postprocess)
        self.tuned = base.own_all if own else base.best_all
        self.saved = self.save(loaded.net.eval(), self.config(result.stopped, self.baseline, 0, result.steps,
                                                              result.seconds, weights_net=loaded.net))
        best_all, own_all = basescore.distinct(base.best_all, base.own_all)
        kept = (f"its own post-processing (AP@0.5 {own_all} on {base.regions})" if own else
                f"post-processing chosen on {base.regions} (AP@0.5 {best_all} there, {own_all} with its own)")
        return (f"the fine-tuned weights did not beat the base model: validation AP@0.5 {self.short_of(best)}. "
                f"Saved the base model's weights with {kept}"
                + (f", for objects of {diameter:.0f} px" if loaded.estimates_size and diameter else ""))
