"""``napari-unet train``: the Fine-tune widget's engine (:func:`napari_unet.finetune.finetune_iter`)
with its defaults (:class:`~napari_unet.finetune.FinetuneSettings`); the options given override them.

:func:`cmd_train` reads the settings from the arguments (:func:`train_settings`), the training
data, runs (Ctrl-C stops and keeps the best model) and reports what was written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import (UsageError, end_progress_line, load_model, pairs, progress_printer, read_image, read_labels,
                     usage_errors)

#: Options that go to :class:`~napari_unet.finetune.FinetuneSettings` under their own name when given.
SAME_NAME = ("minutes", "epochs", "loss", "target", "w0", "sigma", "patience", "batch_size", "lr", "seed", "device",
             "steps_per_epoch")


def cmd_train(args) -> int:
    """``napari-unet train``: settings from the arguments, run, report (0 when a model was written)."""
    out = _model_path(args.output)
    if out.exists() and not (args.overwrite or args.resume):
        raise UsageError(f"{out} already exists: choose another -o, or pass --overwrite to replace it")
    items, data = _training_data(args)
    base = load_model(args.model)
    settings = train_settings(args)
    triples = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in items]
    resume_file = out.with_name(out.name + ".resume")  # the run's state after every epoch (not a model file)
    if args.resume and not resume_file.is_file():
        raise UsageError(f"nothing to resume: {resume_file} does not exist (it is written after every epoch of a "
                         "run with the same -o)")
    _announce(base, settings, len(triples), resume_file if args.resume else None)
    result = _run(base, triples, settings, out, data, resume_file, args.resume)
    return _report(result, out)


def _model_path(output: str) -> Path:
    """``-o``, ending in ``.safetensors``, in a writable folder."""
    out = Path(output)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write the model to {out.parent}: the folder is missing or not writable")
    return out


def train_settings(args):
    """The :class:`~napari_unet.finetune.FinetuneSettings` of the arguments (the defaults where none
    was given), its loss and weight map checked."""
    from ..training import SegmentationLoss
    from ..training.finetune import FinetuneSettings

    given = {key: getattr(args, key) for key in SAME_NAME if getattr(args, key) is not None}
    if args.patch_size is not None:
        given["patch_size"] = args.patch_size[0] if len(args.patch_size) == 1 else tuple(args.patch_size)
    if args.keep_worse:
        given["only_if_better"] = False
    if args.object_diameter is not None:
        given["object_diameter"] = args.object_diameter
    if args.no_resize:
        given["resize"] = False
    if args.no_validation:
        given["validate"] = False
    if args.no_weight_map:
        given["weights"] = "none"
    elif args.weight_map is not None:
        given["weights"] = args.weight_map
    if "epochs" in given:  # a number of epochs replaces the default time budget
        given.setdefault("minutes", None)
    settings = FinetuneSettings(**given)
    with usage_errors(ValueError):
        settings.weight_map()
        SegmentationLoss.from_spec(settings.loss_spec()[0])
    return settings


def _training_data(args) -> tuple[list, str]:
    """The training pairs (``--images``/``--masks``) or triples with reviewed regions
    (``--training-set``), and what to call them in the model card."""
    if args.training_set:
        if args.images or args.masks:
            raise UsageError("give either --training-set or --images and --masks, not both")
        from ..trainingset import TrainingSet

        try:
            ts = TrainingSet.open_existing(Path(args.training_set))
            return ts.triples(), str(ts.folder.resolve())  # pixels nobody reviewed are ignored by the loss
        except ValueError as exc:
            raise UsageError(str(exc).rstrip(".")) from None
    if not (args.images and args.masks):
        raise UsageError("give --images DIR and --masks DIR, or --training-set DIR (a folder of the Correct widget)")
    from ..inputs import spatial_shape

    found = []
    for image_path, mask_path in pairs(Path(args.images), Path(args.masks)):
        image = read_image(image_path)
        # image files hold colour last: the masks have the image's shape without it
        colour = image.ndim == 3 and image.shape[-1] in (3, 4)
        found.append((image, read_labels(mask_path, spatial_shape(image, -1 if colour else None))))
    return found, str(Path(args.images).resolve())


def _announce(base, settings, n_images: int, resume_file: Path | None) -> None:
    target = settings.target or base.target
    if target != base.target:
        print(f"{base.name} predicts a {base.target} target: its output layer is replaced for {target}")
    weight_map = settings.weight_map()
    budget = f"{settings.minutes:g} min" if settings.minutes else \
        f"{settings.epochs} epochs of {settings.steps_per_epoch} steps"
    print(f"training {base.name} on {n_images} image(s) for {budget}; loss {settings.loss}"
          f"{' (w0=%g, sigma=%g px weight map)' % (settings.w0, settings.sigma) if weight_map else ''}, "
          f"lr {settings.lr:g}; Ctrl-C stops and keeps the best model"
          + (f"; resuming from {resume_file.name}" if resume_file is not None else ""), flush=True)


def _event_printer():
    """``on_event(event)``: the base model's score, a progress bar, and validations in logs."""
    import math

    show = progress_printer("train")

    def on_event(event):
        if event.phase:  # after training: the post-processing is chosen (seconds)
            end_progress_line()
            print(event.phase, flush=True)
            return
        if event.step == 0:
            if event.val_ap is not None:
                print(f"base model: validation AP@0.5 {event.val_ap:.3f}", flush=True)
            return
        loss = f"loss {event.loss:.4f}, " if math.isfinite(event.loss) else ""  # not on a validation-only event
        if event.total_steps:
            val = f" val AP50 {event.val_ap:.3f}" if event.val_ap is not None else ""
            show(event.step, event.total_steps, f"{loss}{val}".strip(", "))
        if event.validated and not sys.stderr.isatty():
            print(f"step {event.step}: {loss}validation AP@0.5 {event.val_ap:.3f}", flush=True)

    return on_event


def _run(base, triples, settings, out: Path, data: str, resume_file: Path, resume: bool):
    """Fine-tune to the end; Ctrl-C stops between steps and keeps the best model."""
    import signal
    import threading

    from ..jobs import run_to_end
    from ..training.finetune import finetune_iter

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop and keep the best
    try:
        with usage_errors(ValueError):
            return run_to_end(finetune_iter(base, triples, settings, path=out, overwrite=True, stop=stop, source=data,
                                            checkpoint=resume_file, resume=resume, keep_unvalidated=True),
                              _event_printer())
    finally:
        signal.signal(signal.SIGINT, previous)


def _report(result, out: Path) -> int:
    """Say what was written (or why nothing was): 0 for a model written, 1 otherwise."""
    end_progress_line()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.path is None:
        if result.discarded:
            print(f"napari-unet: {result.discarded} ({result.steps} steps, {result.stopped}); {out} was not written. "
                  "Correct more objects or train longer, or pass --keep-worse to keep it anyway", file=sys.stderr)
        else:
            print(f"napari-unet: error: {result.stopped}; no model was written", file=sys.stderr)
        return 1
    from ..inference.postprocess import postprocess_text

    chosen = (f"; post-processing chosen on the validation region: {postprocess_text(result.postprocess)} "
              f"(AP@0.5 {result.tuned_ap50:.3f})" if result.tuned_ap50 is not None else "")
    score = (f"best validation AP@0.5 {result.metrics['ap50']:.3f} at step {result.best_step} of {result.steps}"
             if result.metrics else f"not validated, {result.steps} steps")
    if result.weights == "base":  # the discarded note says where its post-processing was chosen
        score = f"{result.discarded}; {result.steps} steps"
        chosen = f"; post-processing: {postprocess_text(result.postprocess)}"
    print(f"saved {result.path} ({score}; {result.stopped}){chosen}")
    return 0
