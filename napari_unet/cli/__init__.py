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

One module per command group: :mod:`.predict`, :mod:`.train`, :mod:`.evaluate` (evaluate,
models, export) and :mod:`.parser` (the arguments); :mod:`.common` holds the usage error, the
progress bar and the reading of images and masks through :mod:`napari_unet.inputs`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_USAGE, IMAGE_SUFFIXES, UsageError
from .evaluate import cmd_evaluate, cmd_export, cmd_models
from .parser import build_parser
from .predict import cmd_predict
from .train import cmd_train, train_settings

__all__ = ["main", "build_parser", "EXIT_USAGE", "IMAGE_SUFFIXES", "UsageError", "cmd_evaluate", "cmd_export",
           "cmd_models", "cmd_predict", "cmd_train", "train_settings"]

#: A single positional of ``predict`` with one of these suffixes (or a zarr folder) is an input, not a model.
_INPUT_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".jpg", ".jpeg", ".bmp", ".zarr")


def main(argv: list[str] | None = None) -> int:
    from .common import is_input

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    # "napari-unet predict image.tif -o out": the single positional is an input, not a model
    first = Path(args.model) if args.command == "predict" else None
    if first is not None and args.model not in ("unet",) and is_input(first) and \
            (first.suffix.lower() in _INPUT_SUFFIXES or first.is_dir()):
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
