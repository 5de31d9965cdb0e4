"""Fine-tune a model on the user's corrections and keep the result (no Qt).

The engine behind the Fine-tune widget (and usable from Python): corrected triples
``(image, labels, reviewed)`` are split into training and validation *by region* (whole images
when there are enough, else a held-out strip of every image, never overlapping patches), the
base model is trained with :func:`~napari_unet.training.trainer.train_iter` (on images resized so
that their objects reach the network's object size, see :func:`training_scale`), every better
validation is checkpointed atomically into the user's model folder, and the final file carries
a model card (base model, training set, loss and its parameters, budget, validation metrics,
date). :func:`finetune_iter` is a generator of
:class:`~napari_unet.training.trainer.TrainingEvent` that can be stopped between steps; its
return value is a :class:`FinetuneResult`.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .catalog import SUFFIX, bundled_models, known_models, user_model_dir
from .trainingset import check_labels, safe_name

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


#: the object diameter (px) a 2D network is fine-tuned at when its base model declares none
DEFAULT_OBJECT_DIAMETER = 30.0


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
    patch_size: int | tuple | None = None  # None: 256 px for 2D models, 16x64x64 for 3D ones
    batch_size: int = 4
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
    tuned_ap50: float | None = None  # validation AP@0.5 with it (chosen on the same regions)
    best_step: int = 0  # the step of the best validation (of the saved weights)
    discarded: str = ""  # why the fine-tuned weights were not kept although training ran (not better than the base)
    weights: str = "fine-tuned"  # or "base": the saved file holds the base's weights with tuned post-processing
    scale: float = 1.0  # the factor the corrections were resized by for training (see napari_unet.scaling)
    object_diameter: float | None = None  # the corrections' median object diameter, pixels
    resumed: bool = False  # the run went on from an interrupted one (the Fine-tune widget's resume)

    @property
    def gain(self) -> float | None:
        if not self.metrics or not self.baseline:
            return None
        return self.metrics.get("ap50", 0.0) - self.baseline.get("ap50", 0.0)


def _planes(triples: Sequence, spatial_dims: int) -> list[tuple]:
    """2D models train on the planes of stacks: every plane with reviewed pixels."""
    out = []
    for image, labels, reviewed in triples:
        labels = np.asarray(labels)
        if labels.ndim == spatial_dims:
            out.append((image, labels, reviewed))
            continue
        if spatial_dims == 2 and labels.ndim == 3:
            image = np.asarray(image)
            chw = image.ndim == 4  # (C, Z, H, W)
            for z in range(labels.shape[0]):
                if reviewed[z].any():
                    out.append((image[:, z] if chw else image[z], labels[z], reviewed[z]))
            continue
        raise ValueError(f"Labels of {labels.ndim} dimensions do not fit a {spatial_dims}D model: "
                         + ("choose a 2D base model (e.g. unet), or correct a stack (Z, Y, X)." if spatial_dims == 3
                            else "choose a 3D base model (e.g. unet-3d) for volumes, or correct single planes."))
    return out


def _crop(triple, region):
    image, labels, reviewed = triple
    image = np.asarray(image)
    lead = (slice(None),) * (image.ndim - labels.ndim)
    return image[lead + region], labels[region], reviewed[region]


def _reviewed_box(reviewed) -> tuple:
    """The bounding box (slices) of the reviewed pixels."""
    idx = np.nonzero(np.asarray(reviewed))
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _strip(triple, fraction: float, min_side: int):
    """``(training part, validation (image, labels))`` cut from the far end of the reviewed
    region's box along its longer in-plane axis, or None when no fully reviewed strip of at least
    ``min_side`` pixels fits with ``min_side`` pixels left to train on."""
    labels, reviewed = np.asarray(triple[1]), np.asarray(triple[2], bool)
    box = _reviewed_box(reviewed)
    lengths = [box[a].stop - box[a].start for a in range(labels.ndim)]
    axis = int(np.argmax(lengths[-2:])) + labels.ndim - 2
    n = lengths[axis]
    side = max(min_side, int(round(n * fraction)))
    if n - side < min_side:
        return None
    cut = box[axis].stop - side
    tail = tuple(slice(cut, box[a].stop) if a == axis else box[a] for a in range(labels.ndim))
    if not reviewed[tail].all():
        return None
    # training keeps everything before the cut (context included): the strip is never seen
    head = tuple(slice(0, cut) if a == axis else slice(None) for a in range(labels.ndim))
    image, lab, _ = _crop(triple, tail)
    return _crop(triple, head), (image, lab)


def split_by_region(triples: Sequence, fraction: float = 0.25, min_side: int = 64, whole_from: int = 4):
    """``(train, val)``: with ``whole_from`` or more images every 4th image (at least one) is held
    out whole; with fewer, a strip at the far end of every image's reviewed region (the last
    ``fraction`` of it along its longer axis, at least ``min_side`` pixels, fully reviewed) becomes
    validation and is cut off the training image, so no training patch ever overlaps a validation
    pixel. When no image allows a strip (small or sparsely reviewed images) and there are two or
    more, the first is held out whole. Validation items are ``(image, labels)`` (labels 0 where
    not reviewed); an empty ``val`` means nothing could be held out."""
    triples = list(triples)

    def whole(held):
        train = [t for i, t in enumerate(triples) if i not in held]
        val = [(t[0], np.where(t[2], t[1], 0)) for i, t in enumerate(triples) if i in held]
        return train, val

    if len(triples) >= max(2, whole_from):
        return whole(set(range(0, len(triples), 4)))
    train, val = [], []
    for t in triples:
        cut = _strip(t, fraction, min_side) if np.asarray(t[2]).any() else None
        if cut is None:
            train.append(t)
        else:
            train.append(cut[0])
            val.append(cut[1])
    if not val and len(triples) >= 2:
        return whole({0})
    return train, val


def _score_base(net, val, normalization, device, postprocess, target, stop, tune: bool):
    """``(metrics with the base model's own post-processing, its best AP@0.5 over the tuning grid
    and its own settings or None, the grid's best settings when they beat its own or None)`` on
    the held-out regions, predicted once: a fine-tuned model is kept only if it beats the second
    (both sides then choose their post-processing on the same data)."""
    from .inference.postprocess import choose_postprocess, probabilities_to_labels
    from .metrics import evaluate, mean_metrics
    from .training.trainer import _held_out_probabilities

    items = list(_held_out_probabilities(net, val, normalization, device, target, stop))
    metrics = mean_metrics([evaluate(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})))
                            for probs, labels in items])
    if not tune:
        return metrics, None, None
    best, table = choose_postprocess(items, target)
    best_score = max(score for _, score in table)
    if best_score > metrics["ap50"]:  # the grid beats the base's own settings on the user's data
        return metrics, round(best_score, 4), best
    return metrics, round(metrics["ap50"], 4), None


def _min_gain(settings: FinetuneSettings, val) -> float:
    """The validation AP@0.5 a fine-tuned model must gain over its base to be kept: the setting, or
    one held-out object's worth (1 / the objects in the held-out regions). A few corrected images
    leave a few dozen held-out objects, cut from the very images trained on: a smaller gain is
    noise. (Bundled unet, 3 Usiigaci frames, 25 % strips: the base scored 0.896 there, fine-tuned
    weights up to 0.03 better there scored 0.72-0.76 on 8 other frames, the base 0.786.)"""
    if settings.min_gain is not None:
        return max(0.0, float(settings.min_gain))
    objects = sum(int(np.count_nonzero(np.unique(np.asarray(labels)))) for _, labels in val)
    return 1.0 / objects if objects else 0.0


def training_scale(settings: FinetuneSettings, loaded, triples) -> tuple[float, float | None, float | None]:
    """``(scale, network diameter, the corrections' diameter)``: the factor the corrected images
    are resized by so that their objects (the median of each image's median reviewed object) reach
    the diameter the network is trained at. ``(1, None, None)`` for 3D models, with
    ``settings.resize`` off, or without objects of 16 px or more."""
    from .scaling import check_diameter, median_diameter, scale_for

    if not settings.resize or loaded.spatial_dims != 2:
        return 1.0, None, None
    per_image = [d for d in (median_diameter(lab, r) for _, lab, r in triples) if d is not None]
    if not per_image:
        return 1.0, None, None
    diameter = float(np.median(per_image))
    # a base that declares its diameter is trained at it; one that does not, on objects no larger than
    # DEFAULT_OBJECT_DIAMETER (shrinking large objects was measured to help; enlarging small ones was not)
    network = check_diameter(settings.object_diameter, "fine-tuning object diameter") or loaded.object_diameter \
        or min(diameter, DEFAULT_OBJECT_DIAMETER)
    try:
        return scale_for(network, diameter), network, diameter
    except ValueError as exc:
        raise ValueError(f"{exc} (measured on your corrections: objects of {diameter:.0f} px; set the fine-tuning "
                         "object diameter, or turn resizing off).") from None


def _resized(item, scale: float):
    """A training triple ``(image, labels, reviewed)`` or validation pair ``(image, labels)`` with
    its in-plane axes resized by ``scale`` (images linear, labels and masks nearest)."""
    from .scaling import resize_image, resize_labels, scaled_shape

    if scale == 1:
        return item
    from .training.patches import image_channels_first

    labels, image = np.asarray(item[1]), np.asarray(item[0])
    shape = scaled_shape(labels.shape, scale)
    resized = resize_image(image_channels_first(image, labels), shape)  # (C, *shape)
    if image.ndim == labels.ndim:  # the layout it came in: grey stays grey, colour last stays last
        resized = resized[0]
    elif image.shape[:labels.ndim] == labels.shape:
        resized = np.moveaxis(resized, 0, -1)
    out = (resized, resize_labels(labels, shape))
    return out + (resize_labels(np.asarray(item[2]), shape),) if len(item) == 3 else out


def unique_model_name(base: str) -> str:
    """``<base>-ft-<date>`` (with a number if taken) that is neither bundled nor a user model."""
    stem = f"{safe_name(base)}-ft-{dt.date.today():%Y%m%d}"
    taken = set(known_models())
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}-{i}", i + 1
    return name


@dataclass
class Resumable:
    """Where a run keeps its state so that it can be resumed after an interruption (napari closed,
    a crash): ``checkpoint`` (the trainer's state, written after every epoch), ``path`` (the model
    file the run writes) and ``info`` (a small JSON file recording ``path``). A run is known by its
    :func:`run_key`: the same base model, corrections, settings and name find the same files."""

    checkpoint: Path
    info: Path
    path: Path | None  # None until the run has recorded it

    @property
    def exists(self) -> bool:
        return self.checkpoint.is_file() and self.path is not None

    def record(self, path: Path) -> None:
        import json

        from .io import atomic_write

        self.path = Path(path)
        text = json.dumps({"path": str(self.path), "started": dt.datetime.now().isoformat(timespec="seconds")})
        atomic_write(self.info, lambda tmp: Path(tmp).write_text(text))

    def forget(self) -> None:
        for file in (self.checkpoint, self.info):
            file.unlink(missing_ok=True)


#: resume states older than this are removed when a new run starts (their runs were abandoned)
RESUME_MAX_AGE_DAYS = 14


def run_key(base, triples: Sequence, settings: "FinetuneSettings", name: str | None) -> str:
    """A short hash of what a fine-tuning run depends on: the base model (name, and its file's
    modification time), every image, label and reviewed array, the settings and the name."""
    import hashlib

    from .catalog import resolve_model_path

    digest = hashlib.sha256(repr((str(base), name or "", sorted(asdict(settings).items()))).encode())
    try:
        digest.update(str(resolve_model_path(str(base)).stat().st_mtime_ns).encode())
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # a model held in memory: its name stands for it
    for triple in triples:
        for array in triple:
            if array is None:
                digest.update(b"none")
                continue
            array = np.ascontiguousarray(np.asarray(array))
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:20]


def resumable(key: str, folder: Path | None = None) -> Resumable:
    """The resume files of the run ``key`` (in ``<model folder>/.resume``; old ones are cleared)."""
    import json

    folder = Path(folder) if folder is not None else user_model_dir() / ".resume"
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - RESUME_MAX_AGE_DAYS * 86400
    for old in folder.glob("*"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass
    info = folder / f"{key}.json"
    path = None
    try:
        path = Path(json.loads(info.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Resumable(folder / f"{key}.resume", info, path)


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
    carries the base model's validation score as ``val_metrics``); returns a
    :class:`FinetuneResult`. Stopping (``stop.set()``) ends the run within about a second at any
    point (scoring the base model, a training step, a validation pass) and keeps the best model
    so far; nothing is saved when no validation has run yet. Neither the base model nor any other
    existing model file is ever overwritten: a ``name`` already taken is refused. A loss that
    turns NaN/Inf stops training, keeps the best model and says why in ``stopped``.

    With ``settings.only_if_better`` (the default) a model that does not validate better than the
    base model is not saved, not even as a checkpoint: both are judged by their best AP@0.5 over
    the post-processing grid on the same held-out regions. When the base model with the grid's
    best settings beats its own settings, that is saved instead (the base's weights, unchanged,
    with the tuned post-processing: ``FinetuneResult.weights == "base"``); ``discarded`` says
    what happened. With ``settings.validate`` (the default) a
    training set from which nothing can be held out is refused before training.
    """
    from .jobs import PredictionCancelled
    from .modelfile import LoadedModel, load_model, make_config, save_model
    from .training import SegmentationLoss, train_iter
    from .training.trainer import TrainingEvent, tune_postprocess

    started = time.perf_counter()
    settings = settings or FinetuneSettings()
    loaded = base if isinstance(base, LoadedModel) else load_model(base)
    net = copy.deepcopy(loaded.net)  # the caller's model (maybe cached by a widget) stays as it is
    if not triples:
        raise ValueError("The training set is empty: correct an image and add it first.")
    checked = []
    for image, labels, reviewed in triples:
        image = np.asarray(image)
        labels = check_labels(labels)
        reviewed = np.ones(labels.shape, bool) if reviewed is None else np.asarray(reviewed, bool)
        if reviewed.shape != labels.shape:
            raise ValueError(f"The reviewed region {reviewed.shape} does not match the labels {labels.shape}.")
        checked.append((image, labels, reviewed))
    if not any(r.any() for _, _, r in checked):
        raise ValueError("Nothing is marked as reviewed: mark the regions you corrected (or the whole image).")
    checked = [t for t in checked if t[2].any()]
    checked = _planes(checked, net.spatial_dims)
    from .training.patches import image_channels_first

    for i, (image, labels, _) in enumerate(checked):  # a mismatch is said before anything else
        image_channels_first(image, labels, str(i))
    target = settings.target or loaded.target
    spec, _ = settings.loss_spec()
    loss = SegmentationLoss.from_spec(spec)
    weight_map = settings.weight_map()
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
    if settings.validate:
        train, val = split_by_region(checked, settings.val_fraction, min_side=64,
                                     whole_from=settings.whole_images_from)
        if not val:
            raise ValueError("Nothing can be held out to check the model: mark more as reviewed (a fully reviewed "
                             "strip of at least 64 px at the end of a region of 128 px or more), add another image, "
                             "or turn validation off to keep the model unchecked.")
    else:
        train, val = checked, []
    # objects are resized to the diameter the network trains at; the base is scored at its own scale
    scale, net_diameter, diameter = training_scale(settings, loaded, checked)
    base_scale = loaded.scale(diameter) if net_diameter else 1.0
    resized_val = [_resized(v, scale) for v in val]
    base_val = resized_val if base_scale == scale else [_resized(v, base_scale) for v in val]
    train, val = [_resized(t, scale) for t in train], resized_val
    postprocess = loaded.postprocess

    def stopped_early() -> FinetuneResult:
        return FinetuneResult(None, name, {}, {}, "stopped by user", 0, time.perf_counter() - started)

    baseline = {}
    if stop is not None and stop.is_set():
        return stopped_early()
    base_bar = base_pp = None  # what a fine-tuned model must beat to be kept: the base's best on the held-out part
    margin = _min_gain(settings, val)
    if val and target == loaded.target:
        try:
            baseline, base_bar, base_pp = _score_base(net, base_val, loaded.normalization, settings.device, postprocess, target,
                                             stop, tune=settings.only_if_better)
        except PredictionCancelled:
            return stopped_early()
    focus_maps = None
    if settings.focus > 0 and target == loaded.target:  # where the base model is wrong, for the sampler
        from .training.trainer import error_maps

        try:
            focus_maps = error_maps(net, train, loaded.normalization, settings.device, postprocess, target, stop=stop)
        except PredictionCancelled:
            return stopped_early()
    yield TrainingEvent(0, 0, float("nan"), baseline.get("ap50"), 0.0, None, validated=bool(baseline),
                        val_metrics=baseline or None)
    net.train()
    if target != loaded.target:
        from .modelfile import TARGETS

        net.set_out_channels(len(TARGETS[target]))

    def config_now(stopped: str, metrics: dict, best_step: int, steps: int, seconds: float,
                   weights_net=None) -> dict:
        base_weights = weights_net is not None
        provenance = {
            "trained": True, "fine_tuned": not base_weights, "base_model": loaded.name,
            "weights": "the base model's, unchanged (fine-tuning did not beat them)" if base_weights else "fine-tuned",
            "base_provenance": loaded.config.get("provenance", {}).get("data"),
            "data": source or "corrections", "train_images": len(train), "val_regions": len(val),
            "loss": spec, "loss_preset": settings.loss, "weight_map": weight_map, "target": target,
            "settings": asdict(settings), "steps": steps, "best_step": best_step, "stopped": stopped,
            "val_ap50": metrics.get("ap50"), "val_metrics": metrics, "baseline_val_ap50": baseline.get("ap50"),
            "seconds": round(seconds, 1), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "postprocess": postprocess, "postprocess_tuned": tuned is not None,
            "val_ap50_tuned_postprocess": tuned,
            "object_diameter": None if base_weights else net_diameter, "corrections_object_diameter": diameter,
            "scale": 1.0 if base_weights else scale,
        }
        card = (f"# {name}\n\nFine-tuned from `{loaded.name}` on {len(train)} corrected image(s) "
                f"({source or 'corrections'}), loss {settings.loss}"
                f"{f' (w0={settings.w0:g}, sigma={settings.sigma:g} px)' if weight_map else ''}, target {target}, "
                f"{steps} steps ({stopped}).\n\n")
        if base_weights:
            card += (f"The fine-tuned weights scored no better than `{loaded.name}` with post-processing tuned on "
                     "the same held-out regions, so this file holds the base model's weights, unchanged, with "
                     "that post-processing"
                     + (f", for objects of {diameter:.0f} px across as in the corrections (images are resized "
                        f"so that they reach the network's {loaded.object_diameter:g} px unless told another "
                        "object size)" if loaded.object_diameter and diameter else "") + ".\n\n")
        if metrics:
            card += (f"Validation AP@0.5 on held-out regions: {metrics['ap50']:.3f}"
                     + (f" (base model: {baseline['ap50']:.3f}).\n" if baseline else ".\n"))
        else:
            card += ("Not validated: " + ("validation was turned off" if not val else "stopped before the first "
                                          "validation") + "; no score was measured.\n")
        if net_diameter and not base_weights:
            card += (f"\nObjects in the corrections measure {diameter:.0f} px across; the network was trained at "
                     f"{net_diameter:g} px (images resized {scale:.2f}x), and prediction resizes images the same "
                     "way unless told another object diameter.\n")
        if tuned is not None:
            card += (f"\nPost-processing chosen on the same regions: threshold {postprocess['threshold']:g}, minimum "
                     f"size {postprocess['min_size']} px, {'split' if postprocess['split_touching'] else 'no split'} "
                     f"(AP@0.5 {tuned:.3f}).\n")
        if net_diameter and not base_weights:
            sizes = (net_diameter, diameter)
        elif loaded.object_diameter and diameter:
            # the base's weights, validated (and their post-processing tuned) at the corrections' object
            # size: the saved model is for objects of that size, as a fine-tuned one would be
            sizes = (loaded.object_diameter, diameter)
        else:  # the base's own object size, if it declares one
            sizes = (loaded.object_diameter, loaded.config["input"].get("image_object_diameter"))
        return make_config(weights_net if base_weights else net, loaded.config["architecture"], target,
                           loaded.normalization, provenance, card, *sizes)

    saved, tuned = None, None

    def save(weights_net, config) -> Path:
        try:
            return save_model(path, weights_net, config)
        except OSError as exc:  # a full disk, a folder made read-only since the start
            raise ValueError(f"Cannot save the model to {path}: {exc.strerror or exc}. Nothing was overwritten "
                             "(a file already there is kept as it was).") from None

    def beats_base(score: float | None) -> bool:
        return base_bar is None or (score is not None and score > base_bar + margin)

    gen = train_iter(net, train, val, patch_size=settings.patch_size, batch_size=settings.batch_size,
                     lr=settings.lr, epochs=settings.epochs, minutes=settings.minutes,
                     steps_per_epoch=settings.steps_per_epoch, seed=settings.seed,
                     normalization=loaded.normalization, stop=stop, device=settings.device, loss=loss,
                     weight_map=weight_map, target=target, postprocess=postprocess, augment=settings.augment,
                     patience=settings.patience, checkpoint=checkpoint, resume=resume, focus_maps=focus_maps,
                     focus_bias=settings.focus if focus_maps is not None else 0.0,
                     freeze_norm=settings.freeze_norm)
    try:
        while True:
            event = next(gen)
            # checkpoint now: a crash later still leaves the best model so far
            if event.improved and beats_base((event.val_metrics or {}).get("ap50")):
                saved = save(net, config_now("checkpoint", event.val_metrics or {},
                                                                 event.step, event.step, 0.0))
            yield event
    except StopIteration as done:
        result = done.value
    # without validation the last state is all there is: worth keeping unless nothing was trained
    # or the loss broke (the weights that made it break are suspect)
    unvalidated_ok = (not val or keep_unvalidated) and result.steps > 0 and not result.stopped.startswith("non-finite")
    if result.metrics and val and not (stop is not None and stop.is_set()):
        # the post-processing for this model, chosen on the held-out regions (a few seconds)
        try:
            postprocess, table = tune_postprocess(net.eval(), val, loaded.normalization, settings.device, target,
                                                  stop=stop)
            tuned = round(max(score for _, score in table), 4)
        except PredictionCancelled:
            postprocess = loaded.postprocess
    discarded = ""
    if result.metrics:
        best = max(result.metrics["ap50"], tuned if tuned is not None else -1.0)
        if not beats_base(best):
            discarded = (f"not saved: its validation AP@0.5 {best:.3f} is not better than the base model's "
                         f"{base_bar:.3f}" + (f" by more than {margin:.3f} (one held-out object)" if margin else ""))
            postprocess = loaded.postprocess
    weights = "fine-tuned"
    if (result.metrics and not discarded) or (not result.metrics and unvalidated_ok):
        saved = save(net.eval(), config_now(result.stopped, result.metrics, result.best_step,
                                        result.steps, result.seconds))
    elif discarded and (base_pp is not None or (loaded.estimates_size and diameter)) \
            and not (stop is not None and stop.is_set()):
        # the base's weights with the post-processing tuned on the held-out part (and, for a base that estimates
        # the objects' size, made for the corrections' size) beat the fine-tuned weights: the best model for
        # these images
        postprocess, tuned, weights = dict(base_pp or loaded.postprocess), base_bar, "base"
        discarded = (f"the fine-tuned weights (validation AP@0.5 {best:.3f}) did not beat the base model with "
                     f"post-processing tuned on your corrections ({base_bar:.3f}; {baseline['ap50']:.3f} with its "
                     "own)" + (f" by more than {margin:.3f} (one held-out object)" if margin else "")
                     + ": saved the base model's weights with that post-processing"
                     + (f", for objects of {diameter:.0f} px" if loaded.estimates_size and diameter else ""))
        saved = save(loaded.net.eval(), config_now(result.stopped, baseline, 0, result.steps,
                                                   result.seconds, weights_net=loaded.net))
    return FinetuneResult(saved, name, result.metrics, baseline, result.stopped, result.steps,
                          result.seconds, result.history, list(result.warnings), dict(postprocess), tuned,
                          result.best_step, discarded, weights, scale, diameter)
