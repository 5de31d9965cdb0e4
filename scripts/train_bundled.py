"""Reproduce the bundled 2D weights ``napari_unet/weights/<arch>.safetensors``.

Trains ``build_model(arch)`` with its registry defaults on the real sources of
:mod:`napari_unet.datasets` (by default grey fluorescent nuclei from the 2018 Data Science Bowl
*and* phase-contrast cells from Usiigaci, each with its fixed held-out split) plus synthetic
nuclei from :func:`napari_unet.synthetic.fluorescent_nuclei`, for a wall-time budget (all side
outputs trained with the deep-supervision loss when the architecture has them). The best
checkpoint and the post-processing defaults (the mean of the sources' AP@0.5) are chosen on a
few training images per source set aside from training (``--select-on train``, the default;
every bundled model up to the eff-unet of 2026-12-07 chose on the held-out images, as its card
says), then every held-out image is scored once with the real predictor and post-processing,
and the weights (float16) are written with a model card, also as ``<arch>.md`` beside them.
``--checkpoint`` writes the run's state after
every epoch; ``--resume`` continues it (``--minutes`` counts the whole run).

    python scripts/train_bundled.py --minutes 25 --threads 1                 # the classic U-Net
    python scripts/train_bundled.py --arch unet++ --minutes 12 --threads 1
    python scripts/train_bundled.py --minutes 240 --checkpoint run.ckpt --resume ...   # continue
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _options import changed_options  # noqa: E402

from napari_unet import datasets  # noqa: E402
from napari_unet.inference.postprocess import SPLIT_DEPTHS, postprocess_text, probabilities_to_labels  # noqa: E402
from napari_unet.inference.predictor import Predictor, predict, run_to_end  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import DEFAULT_NORMALIZATION, TARGETS, load_model, make_config, save_model  # noqa: E402
from napari_unet.models import build_model, get_spec  # noqa: E402
from napari_unet.synthetic import fluorescent_nuclei  # noqa: E402
from napari_unet.training import SegmentationLoss, train_iter  # noqa: E402
from napari_unet.training.trainer import TrainSettings, as_loaded_model  # noqa: E402

WEIGHTS = ROOT / "napari_unet" / "weights"
SYNTHETIC_SHAPES = [(256, 256), (384, 384), (512, 512), (256, 512), (512, 384)]
# post-processing choices tried on the held-out images
THRESHOLDS = (0.4, 0.5, 0.6, 0.7)
MIN_SIZES = (8, 16, 32)
#: split touching objects at these depths (px at the network's scale), or not
SPLITS = tuple((True, d) for d in SPLIT_DEPTHS) + ((False, SPLIT_DEPTHS[0]),)


def load_sources(names, root):
    """{source: (train {name: pair}, held-out {name: pair})} of the named sources."""
    out = {}
    for name in names:
        source = datasets.SOURCES[name]
        if not datasets.available(source, root):
            raise SystemExit(f"No images of {name} ({', '.join(source.folders)}) under {root}: pass --data-root.")
        out[name] = (datasets.load(source, "train", root), datasets.load(source, "held_out", root))
    return out


def rescale_pairs(pairs, diameter: float | None):
    """Each ``(image, labels)`` resized so that its objects' median diameter becomes ``diameter``
    (pixels; None: unchanged), as prediction with the image's own object size will."""
    if not diameter:
        return list(pairs)
    from napari_unet.scaling import median_diameter, resize_image, resize_labels, scale_for, scaled_shape

    out = []
    for image, labels in pairs:
        scale = scale_for(diameter, median_diameter(labels))
        if scale == 1:
            out.append((image, labels))
            continue
        shape = scaled_shape(labels.shape, scale)
        out.append((resize_image(np.asarray(image, np.float32), shape), resize_labels(labels, shape)))
    return out


def parse_shares(text: str) -> dict:
    """``"nuclei=0.55,cells=0.35,synthetic=0.1"`` -> dict of floats."""
    return {k: float(v) for k, v in (part.split("=") for part in text.split(",") if part)}


def synthetic_pairs(n: int, seed: int):
    """``n`` synthetic images of various sizes and densities (nuclei per 1000 px: 0.1 .. 0.45)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        shape = SYNTHETIC_SHAPES[i % len(SYNTHETIC_SHAPES)]
        density = rng.uniform(0.1, 0.45)
        pairs.append(fluorescent_nuclei(shape, max(3, int(density * shape[0] * shape[1] / 1000)), seed=1000 + i))
    return pairs


def score_postprocess(net, sets: dict, choices, target: str = "binary"):
    """Score each post-processing choice on the images of every source (predicted once); rows
    ``(pp, {source: scores}, mean AP@0.5 over sources)``."""
    predictor = Predictor(as_loaded_model(net, target=target), device="cpu")
    probs = {src: [predict(predictor.model, im, predictor=predictor).probabilities for im, _ in pairs]
             for src, pairs in sets.items()}
    table = []
    for pp in choices:
        per_source = {src: mean_metrics([evaluate(lab, probabilities_to_labels(p, target=target, **pp))
                                         for p, (_, lab) in zip(probs[src], pairs)])
                      for src, pairs in sets.items()}
        table.append((pp, per_source, float(np.mean([s["ap50"] for s in per_source.values()]))))
    return table


def tune_postprocess(net, val_sets: dict, target: str = "binary"):
    """Score every post-processing choice on ``val_sets`` (the images that choose); returns
    (table, best choice): rows as :func:`score_postprocess`'s.
    (``split_touching`` only acts on binary targets: boundary targets split by their interior seeds.)"""
    splits = SPLITS if target == "binary" else SPLITS[:1]  # boundary targets split by their seeds
    choices = [dict(threshold=t, min_size=m, split_touching=sp, split_depth=d)
               for t, m, (sp, d) in itertools.product(THRESHOLDS, MIN_SIZES, splits)]
    table = score_postprocess(net, val_sets, choices, target)
    best = max(table, key=lambda t: (round(t[2], 4), t[0] == DEFAULT_PP))
    return table, best


def set_aside(data: dict, n_max: int, seed: int) -> tuple[dict, dict]:
    """Up to ``n_max`` training images per source (at most a fifth of them, at least one), drawn
    with ``seed``, taken out of training to choose the checkpoint and the post-processing, so the
    held-out images are scored only once, at the end: ``(data without them, {source: {name: pair}})``."""
    rng = np.random.default_rng(seed)
    kept, aside = {}, {}
    for src, (train, held) in data.items():
        names = sorted(train)
        n = min(n_max, max(1, len(names) // 5))
        chosen = set(rng.permutation(names)[:n].tolist())
        aside[src] = {k: v for k, v in train.items() if k in chosen}
        kept[src] = ({k: v for k, v in train.items() if k not in chosen}, held)
    return kept, aside


DEFAULT_PP = dict(threshold=0.5, min_size=16, split_touching=True, split_depth=1.0)


def speed(net, target: str = "binary") -> float:
    """Microseconds per pixel to predict a 1024² image with the threads torch uses here."""
    image, _ = fluorescent_nuclei((1024, 1024), 200, seed=7)
    lm = as_loaded_model(net, target=target)
    predict(lm, image[:256, :256], device="cpu")  # warm-up
    t = time.perf_counter()
    predict(lm, image, device="cpu")
    return (time.perf_counter() - t) / image.size * 1e6


def card(args, net, data, n_synth, result, default_row, best, chosen, seconds, us_per_px) -> str:
    """The model card. ``default_row`` / ``best``: held-out scores with the default and the stored
    post-processing; ``chosen``: ``(set-aside images {source: {name: pair}}, or {} when the
    held-out images chose; the mean AP@0.5 where the choice was made)``."""
    today = dt.date.today().isoformat()
    spec = get_spec(args.arch)
    classes = {"binary": "binary output (background / foreground)",
               "boundary": "three output classes (background / interior / boundary)"}[args.target]
    modalities = " and ".join(datasets.SOURCES[s].modality for s in args.sources)
    if args.arch == "unet":
        about = f"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) with "same" padding and batch norm,
features 16, 32, 64, 128, 256 ({net.n_parameters / 1e6:.2f} M parameters), one input channel,
{classes}, stored as float16 ({today}).

**Why this width.** The paper's widths (64..1024) give 31 M parameters and are ~16x slower;
16..256 has about 2 M parameters and predicts at ~0.7 µs/pixel on 2 idle CPU cores (about
1 µs on a busy one), so a 1024² image takes about a second without a GPU (measured while
writing this card: {us_per_px:.2f} µs/pixel with {torch.get_num_threads()} thread(s)), and a
fine-tuning step on a laptop CPU stays short."""
    else:
        arguments = ", ".join(f"{k}={v}" for k, v in net.config.items() if k not in ("spatial_dims",))
        about = f"""{spec.title} ({spec.reference}) as registered under `{args.arch}`: {arguments}
({net.n_parameters / 1e6:.2f} M parameters), one input channel, {classes}, stored as float16
({today}). Predicts at {us_per_px:.2f} µs/pixel with {torch.get_num_threads()} CPU thread(s)
(measured while writing this card)."""
    with torch.no_grad():
        levels = len(net.eval()(torch.zeros(1, 1, 64, 64), side_outputs=True))
    supervision = (f" All {levels} side outputs are trained "
                   "(deep-supervision loss: targets resized per level, normalised weights halving per level)."
                   if spec.deep_supervision else "")
    shares = parse_shares(args.shares)
    aside, chosen_ap = chosen
    real = "\n".join(
        f"- **{datasets.SOURCES[s].modality}** (`{'`, `'.join(datasets.SOURCES[s].folders)}`): "
        f"{len(train)} images for training"
        + (f", and {len(aside[s])} more set aside (not trained on) to choose the checkpoint and the post-processing "
           f"({', '.join(sorted(aside[s]))})" if aside else "")
        + f", {len(held)} held out (fixed split, `napari_unet.datasets`: "
        f"{', '.join(sorted(held))}); {shares.get(s, 0):.0%} of the patches."
        for s, (train, held) in data.items())
    pp, per_source, mean_ap = best
    where = "set-aside training" if aside else "held-out"
    if aside:
        chosen_text = (f"The checkpoint and the stored post-processing defaults were chosen on the set-aside training "
                       f"images (the best mean AP@0.5 over the sources there, {chosen_ap:.3f}): the held-out images "
                       "are scored only here.")
    else:
        chosen_text = (f"The checkpoint and the stored post-processing defaults were chosen on these same images (the "
                       f"best mean AP@0.5 over the sources, {mean_ap:.3f}), so their rows are slightly optimistic.")
    rows = []
    for label, (p, scores, _) in (("default", default_row), ("stored defaults", best)):
        for src, m in scores.items():
            rows.append(f"| {src} | {label} ({pp_text(args, p)}) | {m['ap50']:.3f} | {m['f1']:.3f} | "
                        f"{m['mean_iou']:.3f} | {m['ap75']:.3f} | {m['ap50_95']:.3f} | {m['dice']:.3f} |")
    rows = "\n".join(rows)
    return f"""# {args.arch} — {spec.title} for {modalities} (bundled)

{about}

## Data

{real}
- **Synthetic**: {n_synth} images from `napari_unet.synthetic.fluorescent_nuclei` (seeds
  1000..{1000 + n_synth - 1}, sizes 256² to 512², 0.1-0.45 nuclei per 1000 px); {shares.get('synthetic', 0):.0%} of the patches.
- **Target**: {target_text(args)}
- **Input normalisation**: percentile 1 .. 99.8 per image (as in prediction).{size_text(args)}

## Training

Random {args.patch_size}² patches (80 % placed on an object), batch {args.batch_size}, {LIGHT_AUGMENTATION if getattr(args, 'augment', 'default') == 'light' else AUGMENTATION}; loss
{SegmentationLoss.from_spec(args.loss).describe()} ({weighting_text(args)}).{supervision} AdamW
(lr {args.lr:g}, weight decay 1e-4), 50 warm-up steps then cosine decay; budget
{args.minutes:g} min wall time on the CPU ({torch.get_num_threads()} thread(s)):
{result.steps} steps in {seconds / 60:.1f} min{init_text(args)}; the checkpoint with the best validation AP@0.5
(step {result.best_step}; validated every {args.steps_per_epoch} steps on up to {args.val_images} {where} images per
source with {val_postprocess(args)}) is kept. Reproduce with
`python scripts/train_bundled.py --arch {args.arch} --minutes {args.minutes:g} --threads {torch.get_num_threads()}{changed_options(build_parser(), args, SHOWN, {"init": "BASE"})}`{
    ", where BASE is the starting model above, made first with its own command" if args.init else ""}.

## Validation (all held-out images, whole images, predictor + post-processing)

| source | post-processing | AP@0.5 | F1@0.5 | mean matched IoU | AP@0.75 | AP@0.5:0.95 | pixel Dice |
|---|---|---|---|---|---|---|---|
{rows}

AP = TP / (TP + FP + FN) per image (DSB2018 / StarDist definition), averaged over each
source's held-out images. {chosen_text}

## Limits

Trained for {modalities}, 2D. Bright-field, H&E and dense 3D tissue are out of its domain:
fine-tune on a few corrected images there.
"""


def size_text(args) -> str:
    if not args.object_diameter:
        return ""
    return (f"\n- **Object size**: every image (held-out ones too) resized so that its objects' median diameter is "
            f"{args.object_diameter:g} px, as the Segment dock and `napari-unet predict` do when given the objects' "
            "size: the validation below assumes the user gives it.")


AUGMENTATION = ("augmented with the trainer's defaults (`napari_unet.training.augment.Augmenter`: flips, quarter "
                "turns, the U-Net paper's elastic deformation, scale, intensity scale / shift / gamma, noise)")
LIGHT_AUGMENTATION = ("augmented lightly (`--augment light`: flips, quarter turns, intensity scale 0.9-1.1 / shift "
                      "±0.05 / gamma 0.85-1.2 on 80 % of the patches; no elastic deformation, scale or noise)")


def augmenter(args):
    """The trainer's ``augment`` setting for ``--augment``."""
    if args.augment == "default":
        return True
    from napari_unet.training.augment import Augmenter

    return Augmenter(p_elastic=0.0, p_scale=0.0, p_noise=0.0, intensity_scale=(0.9, 1.1),
                     intensity_shift=(-0.05, 0.05), gamma=(0.85, 1.2))


def init_text(args) -> str:
    """What the starting weights were, for the card's training paragraph."""
    if not args.init:
        return ""
    p = args.init_provenance
    before = (f"{p.get('steps')} steps, {p.get('minutes')} min, held-out AP@0.5 {p.get('val_ap50')}; "
              f"`{p.get('script', 'scripts/train_bundled.py')}`") if p else "no provenance recorded"
    return f", starting from the weights `{args.init}` ({before})"


def pp_text(args, pp: dict) -> str:
    if args.target == "binary":
        return postprocess_text(pp)
    return f"threshold {pp['threshold']:g}, min size {pp['min_size']} px"


def target_text(args) -> str:
    if args.target == "boundary":
        return ("three classes: background, interior, and boundary (every nucleus's inner outline, so touching "
                "nuclei are always apart); labels are the watershed of the interior from its connected seeds.")
    return ("foreground = labels > 0, except the inner boundary pixels where two nuclei touch, which are "
            "background (a 2-pixel gap that keeps touching nuclei apart).")


def weighting_text(args) -> str:
    if args.w0 is not None:
        wc = "balanced class weights w_c" if args.class_weights == "balanced" else "w_c = 1"
        return (f"the cross-entropy weighted by the U-Net paper's weight map, w0 {args.w0:g}, sigma {args.sigma:g} px, "
                f"{wc}, computed on the target's objects")
    return f"with the gap pixels between touching nuclei weighted x{args.gap_weight:g} in the cross-entropy"


def val_postprocess(args) -> dict:
    return dict(threshold=0.5, min_size=16, split_touching=args.val_split == "on")


TARGET_TEXT = {"binary": "foreground minus touching boundaries",
               "boundary": "background / interior / boundary (every object's inner outline)"}


def weight_map_params(args) -> dict | None:
    if args.w0 is None:
        return None
    return {"w0": args.w0, "sigma": args.sigma, "class_weights": None if args.class_weights == "none" else "balanced"}


#: options the card's reproduce command names itself (or that are paths of this machine)
SHOWN = ("arch", "out", "minutes", "threads", "data_root", "checkpoint", "resume")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder holding the sources' folders (default: $NAPARI_UNET_DATA or ../shared/data)")
    ap.add_argument("--sources", nargs="+", default=["nuclei", "cells"], choices=sorted(datasets.SOURCES),
                    help="real sources to train on (napari_unet.datasets.SOURCES), each with its fixed held-out split")
    ap.add_argument("--shares", default="nuclei=0.55,cells=0.35,synthetic=0.1",
                    help="share of the patches drawn from each source and from the synthetic images")
    ap.add_argument("--val-images", type=int, default=12,
                    help="images per source scored at every validation during training")
    ap.add_argument("--select-on", choices=("train", "held-out"), default="train",
                    help="where the best checkpoint and the stored post-processing are chosen: on up to --val-images "
                         "training images per source (at most a fifth) set aside from training, so the held-out "
                         "images are scored only at the end; or on the held-out images (as every bundled model up to "
                         "the eff-unet of 2026-12-07: their held-out numbers are slightly optimistic)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="write the run's state here after every epoch")
    ap.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    ap.add_argument("--arch", default="unet", help="registered 2D architecture (napari-unet models)")
    ap.add_argument("--out", type=Path, default=None, help="default: napari_unet/weights/<arch>.safetensors")
    ap.add_argument("--loss", default="ce+dice", help="loss spec, e.g. ce+dice, hybrid, ce+hybrid")
    ap.add_argument("--minutes", type=float, default=25.0, help="training wall-time budget (validation included)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--synthetic", type=int, default=40, help="number of synthetic images")
    ap.add_argument("--object-diameter", type=float, default=None,
                    help="resize every image so that its objects' median diameter is this many pixels (held-out "
                         "images too, as if the user gave their object size); stored in the model file")
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--classification-weight", type=float, default=0.0,
                    help="unet3+: weight of the classification-guided module's loss (the paper: 1; 0 leaves the "
                         "CGM untrained, see scripts/train_cgm.py)")
    ap.add_argument("--steps-per-epoch", type=int, default=100, help="steps between validations")
    ap.add_argument("--gap-weight", type=float, default=5.0,
                    help="cross-entropy weight of the gap pixels between touching nuclei")
    ap.add_argument("--init", default=None,
                    help="start from these weights (a bundled name or model file) instead of random ones, "
                         "e.g. to train the bundled model further with a smaller --lr")
    ap.add_argument("--target", choices=("binary", "boundary"), default="binary",
                    help="binary: foreground with a gap cut between touching nuclei; boundary: 3 classes "
                         "(background, interior, boundary; seeds from the interior)")
    ap.add_argument("--w0", type=float, default=None,
                    help="use the U-Net paper's weight map with this w0 instead of --gap-weight")
    ap.add_argument("--sigma", type=float, default=5.0, help="the weight map's sigma in pixels (with --w0)")
    ap.add_argument("--class-weights", choices=("balanced", "none"), default="balanced",
                    help="the weight map's w_c (with --w0): balanced class frequencies, or 1 everywhere")
    ap.add_argument("--augment", choices=("default", "light"), default="default",
                    help="default: the trainer's augmentation; light: flips, quarter turns and a milder intensity "
                         "change only (no elastic deformation, scale or noise), e.g. to go on training a model "
                         "at a small --lr on images like the real ones")
    ap.add_argument("--val-split", choices=("on", "off"), default="off",
                    help="split touching objects (watershed) when validating during training")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    data = load_sources(args.sources, args.data_root)
    shares = parse_shares(args.shares)
    unknown = set(shares) - set(args.sources) - {"synthetic"}
    if unknown:
        raise SystemExit(f"--shares names {', '.join(sorted(unknown))}, which --sources does not train on.")
    train_pairs, weights = [], []
    aside = {}
    if args.select_on == "train":
        data, aside = set_aside(data, args.val_images, args.seed + 1)
    if args.object_diameter:  # every image (held-out ones too) at the network's object size
        data = {src: (dict(zip(tr, rescale_pairs(tr.values(), args.object_diameter))),
                      dict(zip(held, rescale_pairs(held.values(), args.object_diameter))))
                for src, (tr, held) in data.items()}
        aside = {src: dict(zip(pairs, rescale_pairs(pairs.values(), args.object_diameter)))
                 for src, pairs in aside.items()}
    for src, (train, _) in data.items():
        # within a source, each image is drawn with probability ~ sqrt(area)
        roots = [math.sqrt(lab.size) for _, lab in train.values()]
        train_pairs += list(train.values())
        weights += [shares.get(src, 0.0) * r / sum(roots) for r in roots]
    synth = rescale_pairs(synthetic_pairs(args.synthetic, args.seed), args.object_diameter)
    if synth:
        roots = [math.sqrt(lab.size) for _, lab in synth]
        train_pairs += synth
        weights += [shares.get("synthetic", 0.0) * r / sum(roots) for r in roots]
    held_sets = {src: list(held.values()) for src, (_, held) in data.items()}
    # the images that choose the checkpoint and the post-processing
    val_sets = {src: list(pairs.values()) for src, pairs in aside.items()} if aside else held_sets
    rng = np.random.default_rng(args.seed)
    val_pairs = []  # the in-training validation: a fixed draw of up to --val-images per source
    for src, pairs in val_sets.items():
        pick = sorted(rng.permutation(len(pairs))[:args.val_images].tolist())
        val_pairs += [pairs[i] for i in pick]
    print("data: " + ", ".join(f"{src} {len(tr)} train / {len(aside.get(src, {}))} set aside / {len(held)} held out"
                               for src, (tr, held) in data.items())
          + f", {len(synth)} synthetic; validating on {len(val_pairs)} during training "
          f"({time.perf_counter() - start:.0f} s)", flush=True)

    if args.out is None:
        args.out = WEIGHTS / f"{args.arch}.safetensors"
    spec = get_spec(args.arch)
    if spec.spatial_dims != 2:
        raise SystemExit(f"{args.arch} is {spec.spatial_dims}D: this script trains the 2D variants.")
    torch.manual_seed(args.seed)
    if not args.init:
        net = build_model(args.arch)
    else:
        base = load_model(args.init)
        if base.config["architecture"] != args.arch:
            raise SystemExit(f"--init {args.init} is a {base.config['architecture']}, not a {args.arch}.")
        net = base.net.float()
        if net.config.get("upsample") == "transpose" and spec.defaults.get("upsample") == "resize":
            from napari_unet.models.unet_pp import with_resize_upsampling

            net = with_resize_upsampling(net)  # stripe-free up-convolutions, from the averaged taps
            print("converted the transposed up-convolutions to resize + 1x1 convolutions", flush=True)
        net.architecture = args.arch
        args.init_provenance = base.config.get("provenance", {})
        print(f"initialised from {args.init} (its held-out AP@0.5: "
              f"{args.init_provenance.get('val_ap50', 'unknown')})", flush=True)
    if net.out_channels != len(TARGETS[args.target]):  # a new head, as fine-tuning does
        net.set_out_channels(len(TARGETS[args.target]))
    print(f"model: {args.arch} {net.config.get('features')}, {net.n_parameters:,} parameters, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    settings = TrainSettings(patch_size=args.patch_size, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes,
                             steps_per_epoch=args.steps_per_epoch, seed=args.seed,
                             normalization=DEFAULT_NORMALIZATION, device="cpu",
                             gap_weight=1.0 if args.w0 is not None else args.gap_weight,
                             weight_map=weight_map_params(args), target=args.target,
                             postprocess=val_postprocess(args), deep_supervision=spec.deep_supervision,
                             classification_weight=args.classification_weight, augment=augmenter(args))
    gen = train_iter(net, train_pairs, val_pairs, settings, image_weights=weights,
                     loss=SegmentationLoss.from_spec(args.loss), checkpoint=args.checkpoint, resume=args.resume)
    recent: list[float] = []

    def report(e):
        if not math.isnan(e.loss):
            recent.append(e.loss)
        if e.validated:
            m = e.val_metrics
            print(f"  validation @ step {e.step}: AP@0.5 {m['ap50']:.3f}  F1 {m['f1']:.3f}  mean IoU {m['mean_iou']:.3f}"
                  f"  Dice {m['dice']:.3f}", flush=True)
        elif e.step % 25 == 0:
            print(f"step {e.step:5d}  epoch {e.epoch:3d}  loss {np.mean(recent[-25:]):.4f}  lr {e.lr:.2e}  "
                  f"{e.seconds_left / 60:5.1f} min left", flush=True)

    t_train = time.perf_counter()
    result = run_to_end(gen, report)
    train_seconds = time.perf_counter() - t_train
    print(f"training: {result.stopped} after {result.steps} steps, {train_seconds / 60:.1f} min; best step "
          f"{result.best_step} AP@0.5 {result.metrics.get('ap50', float('nan')):.3f}", flush=True)

    net.eval()
    table, best = tune_postprocess(net, val_sets, args.target)
    pp, per_source, mean_ap = best
    for p, scores, mean in table:
        print(f"  postprocess {p}: mean AP@0.5 {mean:.3f}  " + "  ".join(
            f"{src} {m['ap50']:.3f}" for src, m in scores.items()))
    default_row = next(r for r in table if r[0] == DEFAULT_PP)
    print(f"chosen post-processing {pp}: " + ", ".join(f"{src} AP@0.5 {m['ap50']:.3f}" for src, m in per_source.items())
          + " (default: " + ", ".join(f"{src} {m['ap50']:.3f}" for src, m in default_row[1].items()) + ")", flush=True)
    chosen_ap = mean_ap  # where it was chosen
    if aside:  # the held-out images, scored once, with the chosen and the default post-processing
        held_table = score_postprocess(net, held_sets, [DEFAULT_PP] + ([pp] if pp != DEFAULT_PP else []), args.target)
        default_row, best = held_table[0], held_table[-1]
        pp, per_source, mean_ap = best
        print("held out: " + ", ".join(f"{src} AP@0.5 {m['ap50']:.3f}" for src, m in per_source.items()), flush=True)
    us_per_px = speed(net, args.target)
    print(f"speed: {us_per_px:.2f} µs/pixel with {torch.get_num_threads()} thread(s)", flush=True)

    held_names = {src: sorted(datasets.split(datasets.SOURCES[src], args.data_root)[1]) for src in data}
    text = card(args, net, {src: (tr, held_names[src]) for src, (tr, _) in data.items()}, len(synth), result,
                default_row, best, (aside, chosen_ap), train_seconds, us_per_px)
    provenance = {
        "trained": True,
        "data": "; ".join(f"{src}: {', '.join(datasets.SOURCES[src].folders)} ({len(tr)} train / "
                          f"{len(held_names[src])} held out)" for src, (tr, _) in data.items())
                + f"; {len(synth)} synthetic fluorescent_nuclei",
        "held_out": held_names,
        "val_ap50": round(mean_ap, 4),
        "val_ap50_per_source": {src: round(m["ap50"], 4) for src, m in per_source.items()},
        "val_data": "mean of held-out " + " / ".join(f"{src} {m['ap50']:.3f}" for src, m in per_source.items()),
        "val_ap50_default_postprocess": {src: round(m["ap50"], 4) for src, m in default_row[1].items()},
        "chosen_on": ({src: sorted(names) for src, names in aside.items()} if aside else "the held-out images"),
        "postprocess": pp, "shares": shares,
        "loss": SegmentationLoss.from_spec(args.loss).describe(), "gap_weight": args.gap_weight,
        "weight_map": weight_map_params(args), "deep_supervision": spec.deep_supervision,
        "target": TARGET_TEXT[args.target], "val_postprocess_in_training": val_postprocess(args),
        "steps": result.steps, "best_step": result.best_step, "minutes": round(train_seconds / 60, 1),
        "patch_size": args.patch_size, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "init": args.init, "object_diameter": args.object_diameter,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": dt.date.today().isoformat(), "script": f"scripts/train_bundled.py --arch {args.arch}",
    }
    config = make_config(net, args.arch, target=args.target, normalization=DEFAULT_NORMALIZATION, provenance=provenance,
                         card=text, object_diameter=args.object_diameter)
    path = save_model(args.out, net, config, half=True)
    path.with_suffix(".md").write_text(text)
    check = load_model(path)  # the saved (float16) weights score the same
    reloaded = {src: mean_metrics([evaluate(lab, probabilities_to_labels(
        predict(check, im, device="cpu").probabilities, target=args.target, **pp)) for im, lab in pairs])["ap50"]
        for src, pairs in held_sets.items()}
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB); reloaded AP@0.5 "
          + ", ".join(f"{src} {v:.3f}" for src, v in reloaded.items())
          + f"; total {(time.perf_counter() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
