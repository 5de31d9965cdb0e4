"""The arguments of ``napari-unet``: one function per command, each setting the command it runs."""

from __future__ import annotations

import argparse

from .evaluate import cmd_evaluate, cmd_export, cmd_models
from .predict import cmd_predict
from .train import cmd_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation for microscopy, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the architectures and the installed models")
    p.set_defaults(func=cmd_models)
    _add_predict(sub)
    _add_train(sub)
    _add_export(sub)
    _add_evaluate(sub)
    return parser


def _diameter(text: str):
    """``--diameter``: a number of pixels or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None


def _add_predict(sub) -> None:
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


def _add_train(sub) -> None:
    from ..training.finetune import DEFAULT_LOSS, LOSS_PRESETS, FinetuneSettings

    p = sub.add_parser("train", help="fine-tune a model on images and instance masks with the same file names")
    p.add_argument("model", help="the starting model: a bundled name (e.g. unet) or a model file")
    p.add_argument("--images", metavar="DIR", help="training images")
    p.add_argument("--masks", metavar="DIR", help="instance labels (0 = background), same names as the images")
    p.add_argument("--training-set", metavar="DIR",
                   help="instead of --images/--masks: a training-set folder of the Correct widget (its reviewed "
                        "regions are honoured: pixels nobody reviewed are ignored)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the model file to write (.safetensors); an existing one is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (when the new model is written)")
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
    _add_weight_map(p, d)
    p.add_argument("--keep-worse", action="store_true",
                   help="write the model even when it validates no better than the base model (default: not written)")
    p.add_argument("--no-validation", action="store_true",
                   help="train on everything and hold nothing out (the model is written unchecked)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop early after this many validations without a better validation AP@0.5")
    _add_sizes(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {d.patches(2)[1]} for 2D models, {d.patches(3)[1]} for 3D ones")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N | mps (default {d.device})")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run where its last epoch ended (weights, optimizer, schedule, "
                        "best model), from OUT.safetensors.resume; --minutes/--epochs count the whole run")
    p.set_defaults(func=cmd_train)


def _add_weight_map(p, d) -> None:
    """``train``'s weight-map options (``d``: the default settings)."""
    p.add_argument("--weight-map", choices=("border", "full", "none"), default=None,
                   help="the U-Net paper's weight map: its border term (w_c = 1), the full map with class balance "
                        "w_c, or none (default: the loss preset's; none for a plain loss spec)")
    p.add_argument("--w0", type=float, default=None, help=f"weight-map amplitude w0 (default {d.w0:g}, the paper's)")
    p.add_argument("--sigma", type=float, default=None,
                   help=f"weight-map sigma in pixels (default {d.sigma:g}, the paper's)")
    p.add_argument("--no-weight-map", action="store_true",
                   help="plain (unweighted) cross-entropy (= --weight-map none)")


def _add_sizes(p) -> None:
    """``train``'s object and patch sizes."""
    from ..training.finetune import FinetuneSettings

    d = FinetuneSettings()
    p.add_argument("--object-diameter", type=float, default=None, metavar="PX",
                   help="train with objects resized to this diameter (default: the base model's, else objects over "
                        "30 px are shrunk to 30)")
    p.add_argument("--no-resize", action="store_true", help="train at the images' own size")
    p.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help=f"patch side, or one size per axis (default: {d.patches(2)[0][0]} for 2D models, "
                        f"{' '.join(map(str, d.patches(3)[0]))} for 3D)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model as a BioImage.IO model package (.zip) for deepImageJ, QuPath, "
                                      "ilastik and bioimageio.core")
    p.add_argument("model", help="a bundled model name (e.g. unet) or a model file")
    p.add_argument("output", metavar="OUT.zip", help="the package to write (.zip is appended if missing)")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="an author of the model (repeat for several; default: napari-unet contributors)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip bioimageio.core's model test of the package before it is written")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists")
    p.set_defaults(func=cmd_export)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="AP@0.5, F1, matched IoU, Dice per image and mean")
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted instance labels")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth instance labels, same names")
    p.set_defaults(func=cmd_evaluate)
