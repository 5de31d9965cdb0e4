"""The ``napari-unet`` command line: the same engine as the widgets, headless.

    napari-unet models
    napari-unet predict [MODEL] INPUT... -o OUTDIR [--device auto] [--probabilities]
                        [--format tif|zarr] [--scheduler ADDRESS] [--block-size 2048]
    napari-unet train MODEL --images DIR --masks DIR -o OUT [--minutes M | --epochs E] [--w0 10 --sigma 5]
                      [--target binary|boundary]
    napari-unet evaluate --pred DIR --gt DIR
    napari-unet export MODEL OUT.zip [--author NAME] [--no-check]

Errors in what the user gave (missing files, bad images, unusable model files) print one line
and exit with code 2; Ctrl-C exits with 130 and leaves no half-written file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command's input, reported as one line and exit code 2."""


def _progress_printer(label: str):
    """``show(done, total, message)`` draws a one-line progress bar on a terminal (nothing in logs)."""
    last = [-1]

    def show(done: int, total: int, message: str = ""):
        pct = int(100 * done / max(total, 1))
        if pct != last[0] and sys.stderr.isatty():
            bar = "#" * (pct // 4)
            print(f"\r{label}: [{bar:<25s}] {pct:3d}% {message}", end="", file=sys.stderr, flush=True)
        last[0] = pct

    return show


def cmd_models(args) -> int:
    from .modelfile import known_models, read_config
    from .models import available_models, build_model, get_spec

    print(f"{'name':<16s} {'variant':<40s} {'dims':>4s} {'params':>8s} {'deep sup.':>9s}  weights")
    files = known_models()
    for name in available_models():
        spec = get_spec(name)
        n = build_model(name).n_parameters
        weights = "-"
        if name in files:
            data = read_config(files[name]).get("provenance", {}).get("data", "")
            weights = f"bundled ({data})" if data else "bundled"
        print(f"{name:<16s} {spec.title:<40s} {spec.spatial_dims:>3d}D {n / 1e6:7.2f}M "
              f"{'yes' if spec.deep_supervision else 'no':>9s}  {weights}")
    others = [n for n in files if n not in available_models()]
    for name in others:
        config = read_config(files[name])
        print(f"{name:<16s} {'(model file) ' + config['architecture']:<40s} {'':>4s} {'':>8s} {'':>9s}  {files[name]}")
    return 0


def _read_image(path: Path):
    import numpy as np
    import tifffile

    if not _is_input(path):
        raise UsageError(f"{path}: no such file")
    try:
        if path.is_dir():  # a .zarr store
            from .inference.lazyio import read_whole

            image = read_whole(path)
        elif path.suffix.lower() in (".tif", ".tiff"):
            image = tifffile.imread(path)
        elif path.suffix.lower() == ".npy":  # mapped: a too-large image is refused before it is read
            image = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            from skimage.io import imread

            image = imread(path)
    except Exception as exc:  # a corrupt or unsupported image file
        if "mmap length is greater than file size" in str(exc):
            exc = "the file is shorter than its header says: truncated?"
        raise UsageError(f"{path}: cannot read the image ({exc})") from None
    if image.size == 0:
        raise UsageError(f"{path}: cannot read the image (no pixel data: the file is empty or corrupt)")
    return image


def _is_input(path: Path) -> bool:
    """A file, or a zarr store (a folder)."""
    return path.is_file() or (path.is_dir() and path.suffix.lower() == ".zarr")


def cmd_predict(args) -> int:
    from .inference.predictor import Predictor
    from .modelfile import ModelFileError

    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not _is_input(p)]
    if missing:
        raise UsageError(f"input not found: {', '.join(missing)}")
    fmt = args.format or ("zarr" if Path(args.output).suffix.lower() == ".zarr" else "tif")
    if Path(args.output).suffix.lower() == ".zarr" and fmt != "zarr":
        raise UsageError(f"-o {args.output} names a zarr store: drop --format {fmt}, or give an output folder")
    if fmt == "zarr" or args.scheduler:
        return _predict_in_blocks(args, inputs, fmt)
    outdir = Path(args.output)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {outdir}: {exc.strerror}") from None
    for path in inputs:  # before any work: an output name taken by a folder cannot be written
        for name in (f"{path.stem}.tif",) + ((f"{path.stem}_probabilities.tif",) if args.probabilities else ()):
            if (outdir / name).is_dir():
                raise UsageError(f"cannot write {outdir / name}: a folder has that name; choose another -o folder")
    try:
        predictor = Predictor(args.model, device=args.device,
                              tile_size=args.tile_size if args.tile_size == "auto" else int(args.tile_size))
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    print(f"model {predictor.model.name} on {predictor.device}")
    failed = []
    for path in inputs:  # one unreadable or unusable file does not stop the batch
        try:
            _predict_one(args, predictor, path, outdir)
        except UsageError as exc:
            print(f"napari-unet: error: {exc}", file=sys.stderr)
            failed.append(path.name)
    if failed and len(inputs) > 1:
        rest = "none was written" if len(failed) == len(inputs) else "the others were written"
        print(f"napari-unet: {len(failed)} of {len(inputs)} inputs failed ({', '.join(failed)}); {rest}",
              file=sys.stderr)
    return EXIT_USAGE if failed else 0


def _predict_one(args, predictor, path: Path, outdir: Path) -> None:
    """Segment one input file and write its outputs (``UsageError`` says what went wrong)."""
    from .jobs import run_to_end
    from .inference.segment import segment_iter
    from .io import write_tif

    from .io import marks_rgb

    image = _read_image(path)
    # a file that says it is colour (RGB TIFF, PNG, JPEG) is read as colour, as napari and train do
    rgb = marks_rgb(path, args.channel_axis)
    try:
        seg = run_to_end(segment_iter(predictor.model, image, predictor=predictor, channel_axis=args.channel_axis,
                                      rgb=rgb,
                                      threshold=args.threshold, min_size=args.min_size,
                                      split_touching=False if args.no_split else None, diameter=args.diameter),
                         lambda e, show=_progress_printer(path.name): show(e.done, e.total, e.message))
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if seg.size_estimate is not None:
        print(f"{path.name}: object size estimated: {seg.size_estimate.describe()}", file=sys.stderr)
    for warning in seg.prediction.warnings:
        print(f"{path.name}: warning: {warning}", file=sys.stderr)
    target = outdir / f"{path.stem}.tif"
    try:
        write_tif(target, seg.labels)
        if args.probabilities:
            target = outdir / f"{path.stem}_probabilities.tif"
            write_tif(target, seg.prediction.foreground)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    print(f"{path.name}: {int(seg.labels.max())} objects -> {outdir / (path.stem + '.tif')}")


def _predict_in_blocks(args, inputs: list[Path], fmt: str) -> int:
    """``predict`` with zarr outputs (images of any size, block by block) and/or on a dask cluster."""
    from .inference.distributed import FileJob, make_runner, segment_files_iter
    from .inference.predictor import Predictor
    from .jobs import Progress
    from .modelfile import ModelFileError

    out = Path(args.output)
    if out.suffix.lower() == ".zarr":
        if len(inputs) > 1:
            raise UsageError(f"{len(inputs)} inputs need an output folder: -o OUTDIR --format zarr")
        labels = [out]
        probabilities = [out.with_name(out.name[:-5] + "_probabilities.zarr")]
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {out}: {exc.strerror}") from None
        labels = [out / f"{p.stem}.{fmt}" for p in inputs]
        probabilities = [out / f"{p.stem}_probabilities.{fmt}" for p in inputs]
    if len(set(labels)) < len(labels):
        raise UsageError("two inputs have the same name: their outputs would overwrite each other")
    jobs = [FileJob(str(i.resolve()), str(lab.resolve()), str(prob.resolve()) if args.probabilities else None, fmt)
            for i, lab, prob in zip(inputs, labels, probabilities)]
    settings = {"device": args.device, "tile_size": args.tile_size if args.tile_size == "auto" else int(args.tile_size)}
    try:
        predictor = Predictor(args.model, **settings)
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # workers resolve the model themselves: an absolute path for a file, else the (bundled) name
    model = str(Path(args.model).expanduser().resolve()) if Path(args.model).expanduser().exists() else args.model
    options = {"channel_axis": args.channel_axis, "threshold": args.threshold, "min_size": args.min_size,
               "diameter": args.diameter,
               "split_touching": False if args.no_split else None, "block_size": args.block_size,
               "label_halo": args.label_halo}
    runner = make_runner(args.scheduler)
    try:
        where = runner.describe() if args.scheduler else str(predictor.device)
        print(f"model {predictor.model.name} on {where}")
        show = _progress_printer("predict")
        for event in segment_files_iter(model, jobs, runner, options, settings, args.threads, predictor):
            if isinstance(event, Progress):
                show(event.done, event.total, event.message)
                continue
            name = Path(event.image).name
            if sys.stderr.isatty():
                print(file=sys.stderr)
            for warning in event.warnings:
                print(f"{name}: warning: {warning}", file=sys.stderr)
            print(f"{name}: {event.n_objects} objects -> {event.labels}")
    finally:
        if args.scheduler:
            runner.close()
    return 0


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def _pairs(images_dir: Path, masks_dir: Path, masks_label: str = "masks") -> list[tuple[Path, Path]]:
    """Files of ``images_dir`` matched by name with ``masks_dir``; UsageError on any mismatch."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"{images_dir}: no images (.tif, .png, .npy) in this folder")
    missing = [p.name for p in images if not (masks_dir / p.name).is_file()]
    if missing:
        raise UsageError(f"no {masks_label} with the name of {len(missing)} image(s) in {masks_dir}: "
                         f"{', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
    return [(p, masks_dir / p.name) for p in images]


def _read_labels(path: Path, shape=None):
    import numpy as np

    labels = _read_image(path)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.mod(labels, 1) == 0):
            raise UsageError(f"{path}: masks must be integer instance labels (0 = background), not {labels.dtype}")
    if labels.min() < 0:
        raise UsageError(f"{path}: masks must not hold negative labels")
    if shape is not None and labels.shape != shape:
        raise UsageError(f"{path}: mask shape {labels.shape} differs from its image's {shape}")
    # integer ids as they are (uint32 above 2**31 must not wrap), whole-number floats as int64
    return labels.astype(np.uint8) if labels.dtype == bool else labels if np.issubdtype(labels.dtype, np.integer) \
        else labels.astype(np.int64)


def _training_data(args) -> tuple[list, str]:
    """The training pairs (``--images``/``--masks``) or triples with reviewed regions
    (``--training-set``), and what to call them in the model card."""
    if args.training_set:
        if args.images or args.masks:
            raise UsageError("give either --training-set or --images and --masks, not both")
        from .trainingset import TrainingSet

        try:
            ts = TrainingSet(Path(args.training_set), create=False)
            if not len(ts):
                raise ValueError(f"{ts.folder}: the training set is empty: add corrections with the Correct widget")
            return ts.triples(), str(ts.folder.resolve())  # pixels nobody reviewed are ignored by the loss
        except ValueError as exc:
            raise UsageError(str(exc).rstrip(".")) from None
    if not (args.images and args.masks):
        raise UsageError("give --images DIR and --masks DIR, or --training-set DIR (a folder of the Correct widget)")
    pairs = []
    for image_path, mask_path in _pairs(Path(args.images), Path(args.masks)):
        image = _read_image(image_path)
        pairs.append((image, _read_labels(mask_path, image.shape[:2] if image.ndim == 3 and image.shape[-1] in (3, 4)
                                          else image.shape)))
    return pairs, str(Path(args.images).resolve())


def cmd_train(args) -> int:
    """``napari-unet train``: the Fine-tune widget's engine (:func:`napari_unet.finetune.finetune_iter`)
    with its defaults (:class:`~napari_unet.finetune.FinetuneSettings`); the options given override them."""
    import math
    import signal
    import threading

    from .training.finetune import FinetuneSettings, finetune_iter
    from .jobs import run_to_end
    from .modelfile import ModelFileError, load_model

    out = Path(args.output)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write the model to {out.parent}: the folder is missing or not writable")
    pairs, data = _training_data(args)
    try:
        base = load_model(args.model)
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    given = {key: getattr(args, key) for key in ("minutes", "epochs", "loss", "target", "w0", "sigma", "patience",
                                                  "batch_size", "lr", "seed", "device", "steps_per_epoch")
             if getattr(args, key) is not None}
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
    try:
        settings.weight_map()
        from .training import SegmentationLoss

        SegmentationLoss.from_spec(settings.loss_spec()[0])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    triples = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in pairs]
    resume_file = out.with_name(out.name + ".resume")  # the run's state after every epoch (not a model file)
    if args.resume and not resume_file.is_file():
        raise UsageError(f"nothing to resume: {resume_file} does not exist (it is written after every epoch of a "
                         "run with the same -o)")
    target = settings.target or base.target
    if target != base.target:
        print(f"{base.name} predicts a {base.target} target: its output layer is replaced for {target}")
    weight_map = settings.weight_map()
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop and keep the best
    budget = f"{settings.minutes:g} min" if settings.minutes else f"{settings.epochs} epochs of {settings.steps_per_epoch} steps"
    print(f"training {base.name} on {len(triples)} image(s) for {budget}; loss {settings.loss}"
          f"{' (w0=%g, sigma=%g px weight map)' % (settings.w0, settings.sigma) if weight_map else ''}, "
          f"lr {settings.lr:g}; Ctrl-C stops and keeps the best model"
          + (f"; resuming from {resume_file.name}" if args.resume else ""), flush=True)
    show = _progress_printer("train")

    def on_event(event):
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

    try:
        result = run_to_end(finetune_iter(base, triples, settings, path=out, overwrite=True, stop=stop, source=data,
                                          checkpoint=resume_file, resume=args.resume, keep_unvalidated=True),
                            on_event)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.path is None:
        if result.discarded:
            print(f"napari-unet: {result.discarded} ({result.steps} steps, {result.stopped}); {out} was not written. "
                  "Correct more objects or train longer, or pass --keep-worse to keep it anyway", file=sys.stderr)
        else:
            print(f"napari-unet: error: {result.stopped}; no model was written", file=sys.stderr)
        return 1
    pp = result.postprocess
    chosen = (f"; post-processing chosen on the validation region: threshold {pp['threshold']:g}, min size "
              f"{pp['min_size']}, {'split' if pp['split_touching'] else 'no split'} (AP@0.5 {result.tuned_ap50:.3f})"
              if result.tuned_ap50 is not None else "")
    score = (f"best validation AP@0.5 {result.metrics['ap50']:.3f} at step {result.best_step} of {result.steps}"
             if result.metrics else f"not validated, {result.steps} steps")
    if result.weights == "base":
        score = f"{result.discarded}; {result.steps} steps"
    print(f"saved {result.path} ({score}; {result.stopped}){chosen}")
    return 0


def cmd_export(args) -> int:
    """``napari-unet export``: a BioImage.IO model package (:func:`napari_unet.bioimageio.export_model`)."""
    from .bioimageio import export_model
    from .modelfile import ModelFileError, load_model

    try:
        model = load_model(args.model)
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    print(f"exporting {model.name} to BioImage.IO" + ("; bioimageio.core then tests the package" if args.check else ""),
          flush=True)
    try:
        out = export_model(model, args.output, authors=args.author or None, check=args.check)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {out}" + (" (bioimageio.core's model test passed)" if args.check else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .metrics import evaluate, mean_metrics

    rows = []
    for pred_path, gt_path in _pairs(Path(args.pred), Path(args.gt), masks_label="ground truth"):
        gt = _read_labels(gt_path)
        rows.append((pred_path.name, evaluate(gt, _read_labels(pred_path, gt.shape))))
    keys = ["ap50", "f1", "mean_iou", "dice", "foreground_iou"]
    print(f"{'image':<32s} " + " ".join(f"{k:>14s}" for k in keys))
    for name, m in rows:
        print(f"{name:<32s} " + " ".join(f"{m[k]:14.4f}" for k in keys))
    mean = mean_metrics([m for _, m in rows])
    print(f"{'mean':<32s} " + " ".join(f"{mean[k]:14.4f}" for k in keys))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .training.finetune import DEFAULT_LOSS, LOSS_PRESETS, FinetuneSettings

    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation for microscopy, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the architectures and the installed models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("predict", help="segment images into instance labels (OUTDIR/<input stem>.tif or .zarr)")
    p.add_argument("model", nargs="?", default="unet",
                   help="a bundled model name (default: unet), a model file, or a BioImage.IO model package "
                        "(.zip or rdf.yaml)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images (TIFF, PNG, NPY, .zarr...)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="output folder, or OUT.zarr for one input (labels; probabilities in OUT_probabilities.zarr)")
    p.add_argument("--format", choices=("tif", "zarr"), default=None,
                   help="output format (default: zarr when -o ends in .zarr, else tif). zarr predicts block by "
                        "block from memory-mapped or zarr input: memory stays flat however large the image")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a dask.distributed cluster: its scheduler address (tcp://host:8786) or scheduler "
                        "file; the blocks of a large image, or the files, become tasks")
    p.add_argument("--block-size", type=int, default=None,
                   help="block side in pixels for zarr outputs (default 2048; 256 for 3D models)")
    p.add_argument("--label-halo", type=int, default=None,
                   help="pixels around a block that labelling sees (default 128; 32 for 3D models): objects up "
                        "to this size are labelled exactly as in one pass")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch threads per task (default: a worker's cores divided by its dask threads)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--tile-size", default="auto")
    p.add_argument("--threshold", type=float, default=None, help="foreground probability (default: the model's)")
    p.add_argument("--min-size", type=int, default=None, help="smallest object in pixels (default: the model's)")
    p.add_argument("--no-split", action="store_true", help="do not split touching objects by watershed")
    p.add_argument("--diameter", "--object-size", type=_diameter, default=None, metavar="PX|auto",
                   help="typical object diameter in pixels, or 'auto' to estimate it from each image: images are "
                        "resized so that objects reach the size the model works at (default: the size of the objects "
                        "the model was fine-tuned on, else estimated; models that declare no object size ignore it)")
    p.add_argument("--channel-axis", type=int, default=None)
    p.add_argument("--probabilities", action="store_true",
                   help="also write <stem>_probabilities.tif (.zarr: every foreground class)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("train", help="fine-tune a model on images and instance masks with the same file names")
    p.add_argument("model", help="the starting model: a bundled name (e.g. unet) or a model file")
    p.add_argument("--images", metavar="DIR", help="training images")
    p.add_argument("--masks", metavar="DIR", help="instance labels (0 = background), same names as the images")
    p.add_argument("--training-set", metavar="DIR",
                   help="instead of --images/--masks: a training-set folder of the Correct widget (its reviewed "
                        "regions are honoured: pixels nobody reviewed are ignored)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the model file to write (.safetensors)")
    budget = p.add_mutually_exclusive_group()
    d = FinetuneSettings()  # the one set of defaults, shared with the Fine-tune widget
    budget.add_argument("--minutes", type=float, default=None, help=f"wall-time budget (default {d.minutes:g})")
    budget.add_argument("--epochs", type=int, default=None, help="a number of epochs instead of a time budget")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help=f"training steps between validations (default {d.steps_per_epoch})")
    p.add_argument("--loss", default=None,
                   help=f"a preset ({'; '.join(LOSS_PRESETS)}; default: {DEFAULT_LOSS}) or terms joined by '+', "
                        "optionally weighted: ce, dice, focal, iou, ms-ssim, hybrid (U-Net 3+: focal + ms-ssim + "
                        "iou); e.g. ce+2*dice. A weight map scales ce (and focal)")
    p.add_argument("--target", choices=("binary", "boundary"), default=None,
                   help="binary foreground (touching objects cut apart) or background/interior/boundary "
                        "(default: the base model's)")
    p.add_argument("--weight-map", choices=("border", "full", "none"), default=None,
                   help="the U-Net paper's weight map: its border term (w_c = 1), the full map with class balance "
                        "w_c, or none (default: the loss preset's; none for a plain loss spec)")
    p.add_argument("--w0", type=float, default=None, help=f"weight-map amplitude w0 (default {d.w0:g}, the paper's)")
    p.add_argument("--sigma", type=float, default=None,
                   help=f"weight-map sigma in pixels (default {d.sigma:g}, the paper's)")
    p.add_argument("--no-weight-map", action="store_true", help="plain (unweighted) cross-entropy (= --weight-map none)")
    p.add_argument("--keep-worse", action="store_true",
                   help="write the model even when it validates no better than the base model (default: not written)")
    p.add_argument("--no-validation", action="store_true",
                   help="train on everything and hold nothing out (the model is written unchecked)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop early after this many validations without a better validation AP@0.5")
    p.add_argument("--object-diameter", type=float, default=None, metavar="PX",
                   help="train with objects resized to this diameter (default: the base model's, else objects over "
                        "30 px are shrunk to 30)")
    p.add_argument("--no-resize", action="store_true", help="train at the images' own size")
    p.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help="patch side, or one size per axis (default: 256 for 2D models, 16 64 64 for 3D)")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N | mps (default {d.device})")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run where its last epoch ended (weights, optimizer, schedule, "
                        "best model), from OUT.safetensors.resume; --minutes/--epochs count the whole run")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("export", help="write a model as a BioImage.IO model package (.zip) for deepImageJ, QuPath, "
                                      "ilastik and bioimageio.core")
    p.add_argument("model", help="a bundled model name (e.g. unet) or a model file")
    p.add_argument("output", metavar="OUT.zip", help="the package to write (.zip is appended if missing)")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="an author of the model (repeat for several; default: napari-unet contributors)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip bioimageio.core's model test of the package before it is written")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("evaluate", help="AP@0.5, F1, matched IoU, Dice per image and mean")
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted instance labels")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth instance labels, same names")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _diameter(text: str):
    """``--diameter``: a number of pixels or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    # "napari-unet predict image.tif -o out": the single positional is an input, not a model
    if args.command == "predict" and args.model not in ("unet",) and Path(args.model).suffix.lower() in (
            ".tif", ".tiff", ".png", ".npy", ".jpg", ".zarr") and _is_input(Path(args.model)):
        args.inputs.insert(0, args.model)
        args.model = "unet"
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nnapari-unet: interrupted; nothing half-written was left behind.", file=sys.stderr)
        return 130
    except (ValueError, MemoryError) as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
