"""``napari-unet predict``: images to instance labels, one file at a time (TIFF outputs) or block
by block (zarr outputs, a dask cluster)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import EXIT_USAGE, UsageError, end_progress_line, is_input, progress_printer, read_image, usage_errors


def cmd_predict(args) -> int:
    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not is_input(p)]
    if missing:
        raise UsageError(f"input not found: {', '.join(missing)}")
    fmt = args.format or ("zarr" if Path(args.output).suffix.lower() == ".zarr" else "tif")
    if Path(args.output).suffix.lower() == ".zarr" and fmt != "zarr":
        raise UsageError(f"-o {args.output} names a zarr store: drop --format {fmt}, or give an output folder")
    if fmt == "zarr" or args.scheduler:
        return _predict_in_blocks(args, inputs, fmt)
    outdir = _output_folder(Path(args.output))
    outputs = [(path, outdir / name) for path in inputs
               for name in (f"{path.stem}.tif",) + ((f"{path.stem}_probabilities.tif",) if args.probabilities else ())]
    _check_outputs(inputs, outputs)
    for _, target in outputs:  # before any work: an output name taken by a folder cannot be written
        if target.is_dir():
            raise UsageError(f"cannot write {target}: a folder has that name; choose another -o folder")
    predictor = _predictor(args)
    print(f"model {predictor.model.name} on {predictor.device}")
    failed = []
    for path in inputs:  # one unreadable or unusable file does not stop the batch
        try:
            _predict_one(args, predictor, path, outdir)
        except UsageError as exc:
            print(f"napari-unet: error: {exc}", file=sys.stderr)
            failed.append(path.name)
    return _batch_end(failed, len(inputs))


def _batch_end(failed: list[str], n_inputs: int) -> int:
    """The exit code of a batch whose ``failed`` inputs (names) each had their error line: with
    several inputs, one more line says which failed."""
    if failed and n_inputs > 1:
        rest = "none was written" if len(failed) == n_inputs else "the others were written"
        print(f"napari-unet: {len(failed)} of {n_inputs} inputs failed ({', '.join(failed)}); {rest}",
              file=sys.stderr)
    return EXIT_USAGE if failed else 0


def _check_outputs(inputs: list[Path], outputs: list[tuple[Path, Path]]) -> None:
    """Refuse, before any work, outputs that would replace an input or each other (``outputs``:
    pairs of input and output path): ``-o .`` in the images' own folder, or ``a/img.tif`` and
    ``b/img.png`` into one folder, must not lose anybody's data. Links count as the file they
    point to."""
    sources = {}
    for path in inputs:
        if _identity(path) is not None:
            sources[_identity(path)] = path
        sources[os.path.normcase(os.path.realpath(path))] = path
    taken: dict[str, Path] = {}
    for source, target in outputs:
        k = os.path.normcase(os.path.realpath(target))
        hit = sources.get(k) or sources.get(_identity(target))
        if hit is not None:
            raise UsageError(f"{target} would overwrite the input {hit}: choose another -o folder")
        if k in taken and taken[k] != source:
            raise UsageError(f"{taken[k]} and {source} would both be written to {target}: predict them into "
                             "different -o folders, or rename one")
        taken[k] = source


def _identity(path: Path):
    """The file's (device, inode), or None when it does not exist (yet)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _output_folder(outdir: Path) -> Path:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {outdir}: {exc.strerror}") from None
    return outdir


def _predictor_settings(args) -> dict:
    return {"device": args.device, "tile_size": args.tile_size if args.tile_size == "auto" else int(args.tile_size)}


def _predictor(args):
    from ..inference.predictor import Predictor
    from ..modelfile import ModelFileError

    with usage_errors(ModelFileError):
        return Predictor(args.model, **_predictor_settings(args))


def _predict_one(args, predictor, path: Path, outdir: Path) -> None:
    """Segment one input file and write its outputs (``UsageError`` says what went wrong)."""
    from ..inference.segment import segment_iter
    from ..inputs import marks_rgb
    from ..jobs import run_to_end

    image = read_image(path)
    # a file that says it is colour (RGB TIFF, PNG, JPEG) is read as colour, as napari and train do
    rgb = marks_rgb(path, args.channel_axis)
    try:
        seg = run_to_end(segment_iter(predictor.model, image, predictor=predictor, channel_axis=args.channel_axis,
                                      rgb=rgb,
                                      threshold=args.threshold, min_size=args.min_size,
                                      split_touching=False if args.no_split else None, diameter=args.diameter),
                         lambda e, show=progress_printer(path.name): show(e.done, e.total, e.message))
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    end_progress_line()
    if seg.size_estimate is not None:
        print(f"{path.name}: object size estimated: {seg.size_estimate.describe()}", file=sys.stderr)
    for warning in seg.prediction.warnings:
        print(f"{path.name}: warning: {warning}", file=sys.stderr)
    _write_outputs(args, seg, path, outdir)
    print(f"{path.name}: {int(seg.labels.max())} objects -> {outdir / (path.stem + '.tif')}")


def _write_outputs(args, seg, path: Path, outdir: Path) -> None:
    from ..io import write_tif

    target = outdir / f"{path.stem}.tif"
    try:
        write_tif(target, seg.labels)
        if args.probabilities:
            target = outdir / f"{path.stem}_probabilities.tif"
            write_tif(target, seg.prediction.foreground)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


def _predict_in_blocks(args, inputs: list[Path], fmt: str) -> int:
    """``predict`` with zarr outputs (images of any size, block by block) and/or on a dask cluster;
    as in a local batch, an input that fails gets one error line and the others are predicted."""
    from ..inference.distributed import FileError, make_runner, segment_files_iter
    from ..jobs import Progress

    jobs = _file_jobs(args, inputs, fmt)
    settings = _predictor_settings(args)
    predictor = _predictor(args)
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
        show = progress_printer("predict")
        failed = []
        for event in segment_files_iter(model, jobs, runner, options, settings, args.threads, predictor):
            if isinstance(event, Progress):
                show(event.done, event.total, event.message)
                continue
            name = Path(event.image).name
            end_progress_line()
            if isinstance(event, FileError):
                print(f"napari-unet: error: {event.message}", file=sys.stderr)
                failed.append(name)
                continue
            if event.size_estimate is not None:
                print(f"{name}: object size estimated: {event.size_estimate}", file=sys.stderr)
            for warning in event.warnings:
                print(f"{name}: warning: {warning}", file=sys.stderr)
            print(f"{name}: {event.n_objects} objects -> {event.labels}")
    finally:
        if args.scheduler:
            runner.close()
    return _batch_end(failed, len(inputs))


def _file_jobs(args, inputs: list[Path], fmt: str) -> list:
    """One :class:`~napari_unet.inference.distributed.FileJob` per input: where its labels (and
    probabilities) go, checked before any work."""
    from ..inference.distributed import FileJob

    out = Path(args.output)
    if out.suffix.lower() == ".zarr":
        if len(inputs) > 1:
            raise UsageError(f"{len(inputs)} inputs need an output folder: -o OUTDIR --format zarr")
        labels = [out]
        probabilities = [out.with_name(out.name[:-5] + "_probabilities.zarr")]
    else:
        _output_folder(out)
        labels = [out / f"{p.stem}.{fmt}" for p in inputs]
        probabilities = [out / f"{p.stem}_probabilities.{fmt}" for p in inputs]
    _check_outputs(inputs, [(i, t) for i, lab, prob in zip(inputs, labels, probabilities)
                            for t in ((lab, prob) if args.probabilities else (lab,))])
    return [FileJob(str(i.resolve()), str(lab.resolve()), str(prob.resolve()) if args.probabilities else None, fmt)
            for i, lab, prob in zip(inputs, labels, probabilities)]
