"""Reproduce the bundled volumetric weights: ``unet-3d``, ``unet-2.5d-stack``, ``unet-2.5d``.

Trains ``build_model(arch)`` (registry defaults) on synthetic fluorescent nuclei stacks from
:func:`napari_unet.synthetic.nuclei_3d` (thick slices: z voxels 2x the xy pixel, as the
``sample_data/nuclei3d_*`` stack), validates on held-out synthetic stacks, picks the
post-processing defaults on them, checks the result on the StarDist 3D test stack
(``../shared/data/nuclei3d_synthetic_stardist``, never trained on) and writes the weights
(float16) with a model card, also as ``<arch>.md``.

    python scripts/train_bundled_3d.py --arch unet-3d --minutes 10 --threads 1
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
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _options import changed_options  # noqa: E402

from napari_unet.inference.postprocess import probabilities_to_labels  # noqa: E402
from napari_unet.inference.predictor import Predictor, predict, run_to_end  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import DEFAULT_NORMALIZATION, load_model, make_config, save_model  # noqa: E402
from napari_unet.models import build_model, get_spec  # noqa: E402
from napari_unet.synthetic import nuclei_3d  # noqa: E402
from napari_unet.training import SegmentationLoss, train_iter  # noqa: E402
from napari_unet.training.trainer import TrainSettings, as_loaded_model  # noqa: E402

STARDIST = ROOT.parent / "shared" / "data" / "nuclei3d_synthetic_stardist"
WEIGHTS = ROOT / "napari_unet" / "weights"
SHAPES = [(32, 96, 96), (24, 128, 128), (32, 128, 96), (40, 96, 128)]
THRESHOLDS = (0.4, 0.5, 0.6)
MIN_SIZES = (16, 64, 128)
SPLITS = (True, False)


DENSITY = (0.5, 5.0)  # nuclei per 10^4 voxels (5: packed, ~1/3 of the voxels are nuclei)
BACKGROUND = (10.0, 60.0)  # photons per voxel
PEAK = (100.0, 300.0)  # photons at an average nucleus's peak
SPREAD = (0.05, 0.35)  # log-normal sigma of the nuclei's brightness


def synthetic(n: int, seed: int):
    """``n`` stacks from sparse to packed, of varied contrast and brightness spread."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        density = rng.uniform(*DENSITY)
        look = dict(background=rng.uniform(*BACKGROUND), mean_peak=rng.uniform(*PEAK),
                    brightness_spread=rng.uniform(*SPREAD))
        pairs.append(nuclei_3d(shape, max(4, int(density * np.prod(shape) / 1e4)), seed=seed * 1000 + i, **look))
    return pairs


def stardist_pairs(folder: Path):
    images = sorted((folder / "images").glob("*.tif"))
    return [(tifffile.imread(p), tifffile.imread(folder / "masks" / p.name).astype(np.int32)) for p in images]


def scores(model, pairs, pp):
    probs = [predict(model, im, device="cpu").probabilities for im, _ in pairs]
    return mean_metrics([evaluate(lab, probabilities_to_labels(p, **pp)) for p, (_, lab) in zip(probs, pairs)])


def tune(net, val_pairs):
    lm = as_loaded_model(net)
    predictor = Predictor(lm, device="cpu")
    probs = [predict(lm, im, predictor=predictor).probabilities for im, _ in val_pairs]
    table = []
    for threshold, min_size, split in itertools.product(THRESHOLDS, MIN_SIZES, SPLITS):
        pp = dict(threshold=threshold, min_size=min_size, split_touching=split)
        table.append((pp, mean_metrics([evaluate(lab, probabilities_to_labels(p, **pp))
                                        for p, (_, lab) in zip(probs, val_pairs)])))
    return table, max(table, key=lambda t: round(t[1]["ap50"], 4))


#: options the card's reproduce command names itself (or that are paths of this machine)
SHOWN = ("arch", "out", "minutes", "threads")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="unet-3d", choices=("unet-3d", "unet-2.5d-stack", "unet-2.5d"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=24, help="synthetic training stacks")
    ap.add_argument("--val", type=int, default=4, help="synthetic validation stacks")
    ap.add_argument("--patch", type=int, nargs=3, default=None, help="patch Z Y X (default: the trainer's)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--loss", default="ce+dice")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or WEIGHTS / f"{args.arch}.safetensors"
    start = time.perf_counter()
    train_pairs, val_pairs = synthetic(args.train, args.seed + 1), synthetic(args.val, args.seed + 2)
    torch.manual_seed(args.seed)
    net = build_model(args.arch)
    spec = get_spec(args.arch)
    print(f"{args.arch}: {net.n_parameters:,} parameters; {len(train_pairs)} training / {len(val_pairs)} validation "
          f"stacks", flush=True)
    loss = SegmentationLoss.from_spec(args.loss)
    pp_train = dict(threshold=0.5, min_size=16, split_touching=False)
    settings = TrainSettings(patch_size=tuple(args.patch) if args.patch else None, batch_size=args.batch_size,
                             lr=args.lr, minutes=args.minutes, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
                             device="cpu", postprocess=pp_train)
    gen = train_iter(net, train_pairs, val_pairs, settings, loss=loss)

    def report(e):
        if e.validated:
            print(f"  step {e.step}: validation AP@0.5 {e.val_metrics['ap50']:.3f}", flush=True)

    t0 = time.perf_counter()
    result = run_to_end(gen, report)
    seconds = time.perf_counter() - t0
    net.eval()
    table, (pp, val) = tune(net, val_pairs)
    check = stardist_pairs(STARDIST) if STARDIST.exists() else []
    lm = as_loaded_model(net)
    stardist = scores(lm, check, pp) if check else None
    print(f"training: {result.steps} steps, {seconds / 60:.1f} min ({result.stopped}); post-processing {pp}: "
          f"validation AP@0.5 {val['ap50']:.3f}; StarDist stack AP@0.5 "
          f"{stardist['ap50'] if stardist else float('nan'):.3f}", flush=True)
    today = dt.date.today().isoformat()
    arguments = ", ".join(f"{k}={v}" for k, v in net.config.items() if k != "spatial_dims")
    text = f"""# {args.arch} — {spec.title} for fluorescent nuclei stacks (bundled)

{spec.title} ({spec.reference}) as registered under `{args.arch}`: {arguments}
({net.n_parameters / 1e6:.2f} M parameters), one input channel, binary output, stored as float16 ({today}).

## Data
Synthetic thick-slice nuclei stacks from `napari_unet.synthetic.nuclei_3d` (z voxels 2x the xy
pixel; {len(train_pairs)} training stacks of {', '.join('x'.join(map(str, s)) for s in SHAPES)} voxels,
{DENSITY[0]:g}-{DENSITY[1]:g} nuclei per 10^4 voxels (sparse to packed), background {BACKGROUND[0]:g}-{BACKGROUND[1]:g} and
nucleus peak {PEAK[0]:g}-{PEAK[1]:g} photons, brightness spread (log-normal sigma) {SPREAD[0]:g}-{SPREAD[1]:g},
seeds {(args.seed + 1) * 1000}..; {len(val_pairs)} held-out stacks drawn alike for validation).
Percentile 1 .. 99.8 normalisation per stack.

## Training
Loss {loss.describe()}; AdamW lr {args.lr:g}, warm-up and cosine decay, batch {args.batch_size};
{result.steps} steps in {seconds / 60:.1f} min on {torch.get_num_threads()} CPU thread(s) ({result.stopped});
best validation checkpoint (step {result.best_step}) kept. Reproduce with
`python scripts/train_bundled_3d.py --arch {args.arch} --minutes {args.minutes:g} --threads {torch.get_num_threads()}{changed_options(build_parser(), args, SHOWN)}`.

## Validation
- Held-out synthetic stacks: AP@0.5 {val['ap50']:.3f}, F1 {val['f1']:.3f}, mean matched IoU {val['mean_iou']:.3f}
  (post-processing {pp}, chosen on these stacks: slightly optimistic).
- StarDist's synthetic 3D test stack (31x61x57, 51 nuclei, never trained on):
  AP@0.5 {stardist['ap50'] if stardist else float('nan'):.3f}. A check that the model transfers, not an accuracy claim.

## Limits
Trained on synthetic data only: fine-tune on a few corrected planes or stacks of your own.
"""
    provenance = {"trained": True, "data": f"{len(train_pairs)} synthetic nuclei_3d stacks",
                  "val_data": "held-out synthetic stacks", "val_ap50": round(val["ap50"], 4),
                  "stardist_ap50": None if stardist is None else round(stardist["ap50"], 4),
                  "postprocess": pp, "loss": loss.describe(), "steps": result.steps, "best_step": result.best_step,
                  "minutes": round(seconds / 60, 1), "lr": args.lr, "batch_size": args.batch_size,
                  "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__, "date": today,
                  "script": f"scripts/train_bundled_3d.py --arch {args.arch}"}
    config = make_config(net, args.arch, "binary", DEFAULT_NORMALIZATION, provenance, card=text)
    path = save_model(out, net, config, half=True)
    path.with_suffix(".md").write_text(text)
    reloaded = scores(load_model(path), val_pairs, pp)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB); reloaded validation AP@0.5 {reloaded['ap50']:.3f}; "
          f"total {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    if not math.isfinite(reloaded["ap50"]):
        raise SystemExit("the saved model does not score")


if __name__ == "__main__":
    main()
