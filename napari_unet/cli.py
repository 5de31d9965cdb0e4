"""The ``napari-unet`` command line: the same engine as the widgets, headless.

    napari-unet models
    napari-unet predict [MODEL] INPUT... -o OUTDIR [--device auto] [--probabilities]

Errors in what the user gave (missing files, bad images, unusable model files) print one line
and exit with code 2; Ctrl-C exits with 130 and leaves no half-written file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command's input, reported as one line and exit code 2."""


def _progress_printer(label: str):
    last = [-1]

    def show(event):
        pct = int(100 * event.done / max(event.total, 1))
        if pct != last[0] and sys.stderr.isatty():
            bar = "#" * (pct // 4)
            print(f"\r{label}: [{bar:<25s}] {pct:3d}% {event.message}", end="", file=sys.stderr, flush=True)
        last[0] = pct

    return show


def cmd_models(args) -> int:
    from .modelfile import known_models, read_config
    from .models import available_models, build_model, get_spec

    print(f"{'name':<14s} {'variant':<40s} {'dims':>4s} {'params':>8s} {'deep sup.':>9s}  weights")
    files = known_models()
    for name in available_models():
        spec = get_spec(name)
        n = build_model(name).n_parameters
        weights = "-"
        if name in files:
            data = read_config(files[name]).get("provenance", {}).get("data", "")
            weights = f"bundled ({data})" if data else "bundled"
        print(f"{name:<14s} {spec.title:<40s} {spec.spatial_dims:>3d}D {n / 1e6:7.2f}M "
              f"{'yes' if spec.deep_supervision else 'no':>9s}  {weights}")
    others = [n for n in files if n not in available_models()]
    for name in others:
        config = read_config(files[name])
        print(f"{name:<14s} {'(model file) ' + config['architecture']:<40s} {'':>4s} {'':>8s} {'':>9s}  {files[name]}")
    return 0


def _read_image(path: Path):
    import numpy as np
    import tifffile

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            image = tifffile.imread(path)
        elif path.suffix.lower() == ".npy":
            image = np.load(path, allow_pickle=False)
        else:
            from skimage.io import imread

            image = imread(path)
    except Exception as exc:  # a corrupt or unsupported image file
        raise UsageError(f"{path}: cannot read the image ({exc})") from None
    if image.size == 0:
        raise UsageError(f"{path}: cannot read the image (no pixel data: the file is empty or corrupt)")
    return image


def cmd_predict(args) -> int:
    import tifffile

    from .inference.predictor import Predictor, run_to_end
    from .inference.segment import segment_iter
    from .modelfile import ModelFileError

    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise UsageError(f"input not found: {', '.join(missing)}")
    outdir = Path(args.output)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {outdir}: {exc.strerror}") from None
    try:
        predictor = Predictor(args.model, device=args.device,
                              tile_size=args.tile_size if args.tile_size == "auto" else int(args.tile_size))
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    print(f"model {predictor.model.name} on {predictor.device}")
    for path in inputs:
        image = _read_image(path)
        try:
            seg = run_to_end(segment_iter(predictor.model, image, predictor=predictor, channel_axis=args.channel_axis,
                                          threshold=args.threshold, min_size=args.min_size,
                                          split_touching=False if args.no_split else None),
                             _progress_printer(path.name))
        except ValueError as exc:
            raise UsageError(f"{path}: {exc}") from None
        if sys.stderr.isatty():
            print(file=sys.stderr)
        for warning in seg.prediction.warnings:
            print(f"{path.name}: warning: {warning}", file=sys.stderr)
        _write_tif(outdir / f"{path.stem}.tif", seg.labels)
        if args.probabilities:
            _write_tif(outdir / f"{path.stem}_probabilities.tif", seg.prediction.foreground)
        print(f"{path.name}: {int(seg.labels.max())} objects -> {outdir / (path.stem + '.tif')}")
    return 0


def _write_tif(path: Path, data) -> None:
    """Atomic TIFF write (temporary file + rename)."""
    import os
    import tempfile

    import tifffile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, compression="zlib")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation for microscopy, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the architectures and the installed models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("predict", help="segment images into instance labels (OUTDIR/<input stem>.tif)")
    p.add_argument("model", nargs="?", default="unet", help="a bundled model name (default: unet) or a model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images (TIFF, PNG, NPY...)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--tile-size", default="auto")
    p.add_argument("--threshold", type=float, default=None, help="foreground probability (default: the model's)")
    p.add_argument("--min-size", type=int, default=None, help="smallest object in pixels (default: the model's)")
    p.add_argument("--no-split", action="store_true", help="do not split touching objects by watershed")
    p.add_argument("--channel-axis", type=int, default=None)
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities.tif")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    # "napari-unet predict image.tif -o out": the single positional is an input, not a model
    if args.command == "predict" and args.model not in ("unet",) and Path(args.model).suffix.lower() in (
            ".tif", ".tiff", ".png", ".npy", ".jpg") and Path(args.model).is_file():
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
