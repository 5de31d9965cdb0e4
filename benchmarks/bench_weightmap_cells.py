"""Does the U-Net paper's weight map help on touching cells? (Usiigaci phase-contrast cells)

Fine-tunes the bundled nuclei model (``load_model("unet")``; random-init ``build_model("unet")``
with ``--from-scratch``) on 2 fixed frames of ``../shared/data/cells_phase_usiigaci`` (set01,
set05) for the same wall-time budget in two arms, same seed and same starting weights:

  (a) the trainer's default loss (cross-entropy + soft Dice), no weight map;
  (b) the same with ``weight_map={"w0": 10, "sigma": 5}`` (the paper's: class balance w_c + border term);
  (c) with ``--border-only``, also the border term alone (``class_weights=None``: w_c = 1), which
      tells the paper's two terms apart.

Patch 256, batch 4, one CPU thread. The checkpoint kept in each arm is the best by AP@0.5 on
the two *training* frames (validated every ``--steps-per-epoch`` steps; the weight-map
computation and validation both count against the budget). Post-processing
(threshold / min_size / split_touching) is picked on the 2 training frames only; the main
table applies one common choice to both arms (best mean training AP@0.5 of the two arms), a
second table each model's own choice. The other 6 frames are used only for the final scores.
Masks lose their stray fragments (< 50 px connected pieces of an id) before anything.
Besides AP, the tables report the test frames' touching cells (objects within 2 px of another,
the pixels the weight map's border term weighs): how many are found at IoU 0.5, and how many
touching pairs come out merged into one object.

    .venv/bin/python benchmarks/bench_weightmap_cells.py [--minutes 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from napari_unet.inference.postprocess import probabilities_to_labels
from napari_unet.inference.predictor import predict, run_to_end
from napari_unet.metrics import evaluate, match_instances, mean_metrics
from napari_unet.training.trainer import as_loaded_model, train_iter

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cells_phase_usiigaci"
TRAIN = ("set01", "set05")
VAL_PP = {"threshold": 0.5, "min_size": 50, "split_touching": True}  # checkpoint choice in training
PP_GRID = [dict(threshold=t, min_size=m, split_touching=s)
           for t, m, s in itertools.product((0.3, 0.5, 0.7), (50, 200), (True, False))]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def clean_mask(labels: np.ndarray, min_piece: int = 50) -> np.ndarray:
    """Drop connected pieces of an id smaller than ``min_piece`` px (the stray fragments)."""
    out = labels.copy()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == i
        pieces, n = ndi.label(own)
        sizes = np.bincount(pieces.ravel())
        small = np.flatnonzero(sizes < min_piece)
        small = small[small > 0]
        if small.size:
            view = out[sl]
            view[np.isin(pieces, small)] = 0
    return out


def touching_pairs(labels: np.ndarray, reach: int = 2) -> set[tuple[int, int]]:
    """Pairs of objects that come within ``reach`` px of each other (the weight map's business)."""
    pairs = set()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - reach - 1, 0), s.stop + reach + 1) for s in sl)
        sub = labels[grown]
        near = np.unique(sub[ndi.binary_dilation(sub == i, iterations=reach)])
        pairs.update((min(i, int(o)), max(i, int(o))) for o in near if o not in (0, i))
    return pairs


def touching_scores(gts, preds) -> dict:
    """Over all frames: recall at IoU 0.5 of the objects that touch another (one-to-one matching
    of the whole image), and the touching pairs merged into one predicted object (both objects'
    most frequent predicted id the same, not background)."""
    found = total = merged = n_pairs = 0
    for gt, pred in zip(gts, preds):
        pairs = touching_pairs(gt)
        involved = {i for p in pairs for i in p}
        matched = {int(t) for t, _ in match_instances(gt, pred, 0.5).pairs}
        found += len(involved & matched)
        total += len(involved)
        major = {}
        for i in involved:
            ids, counts = np.unique(pred[gt == i], return_counts=True)
            major[i] = int(ids[np.argmax(counts)])
        merged += sum(1 for a, b in pairs if major[a] != 0 and major[a] == major[b])
        n_pairs += len(pairs)
    return {"recall": found / max(total, 1), "objects": total, "merged": merged, "pairs": n_pairs}


def load(name):
    image = tifffile.imread(DATA / "images" / f"{name}.tif")
    return image, clean_mask(tifffile.imread(DATA / "masks" / f"{name}.tif"))


def probabilities(net, images):
    loaded = as_loaded_model(net)
    return [predict(loaded, im, device="cpu").probabilities for im in images]


def score(probs, labels, pp):
    preds = [probabilities_to_labels(p, **pp) for p in probs]
    out = mean_metrics([evaluate(lab, pred) for pred, lab in zip(preds, labels)])
    out["touching"] = touching_scores(labels, preds)
    return out


def grid_scores(probs, labels):
    """Training-frame AP@0.5 for every post-processing of the grid."""
    return [score(probs, labels, pp)["ap50"] for pp in PP_GRID]


def pp_str(pp):
    return f"thr {pp['threshold']}, min_size {pp['min_size']}, split {pp['split_touching']}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget per arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--from-scratch", action="store_true", help="start from random build_model('unet')")
    parser.add_argument("--border-only", action="store_true",
                        help="add arm (c): the weight map without its class balance (w_c = 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    names = sorted(p.stem for p in (DATA / "images").glob("set*.tif"))
    test_names = [n for n in names if n not in TRAIN]
    train = [load(n) for n in TRAIN]
    test = [load(n) for n in test_names]
    log(f"train {list(TRAIN)}, test {test_names}; objects per test frame "
        f"{[int(len(np.unique(l)) - 1) for _, l in test]}")

    if args.from_scratch:
        from napari_unet.models import build_model
        torch.manual_seed(args.seed)
        start_net, start_name = build_model("unet"), "random init build_model('unet')"
    else:
        from napari_unet.modelfile import load_model
        start_net, start_name = load_model("unet").net, "bundled nuclei model load_model('unet')"
    start_net = copy.deepcopy(start_net).float().eval()

    arms = {"start (no fine-tuning)": (start_net, None)}
    plans = [("(a) CE + Dice", None), ("(b) CE + Dice + weight map", {"w0": 10.0, "sigma": 5.0})]
    if args.border_only:
        plans.append(("(c) CE + Dice + border term only", {"w0": 10.0, "sigma": 5.0, "class_weights": None}))
    for arm, wm in plans:
        net = copy.deepcopy(start_net).train()
        log(f"training {arm} for {args.minutes} min ...")
        result = run_to_end(train_iter(
            net, train, train, patch_size=256, batch_size=4, lr=args.lr, minutes=args.minutes,
            steps_per_epoch=args.steps_per_epoch, seed=args.seed, device="cpu", weight_map=wm,
            postprocess=VAL_PP))
        log(f"  {result.steps} steps in {result.seconds:.0f} s ({result.stopped}); best step {result.best_step}; "
            f"train-frame AP@0.5 history {[(s, round(m['ap50'], 3)) for s, m in result.history]}")
        arms[arm] = (net.eval(), result)

    # post-processing on the training frames only
    train_probs, train_grid = {}, {}
    for arm, (net, _) in arms.items():
        train_probs[arm] = probabilities(net, [im for im, _ in train])
        train_grid[arm] = grid_scores(train_probs[arm], [lab for _, lab in train])
    trained = [a for a in arms if a.startswith("(")]
    common = PP_GRID[int(np.argmax(np.mean([train_grid[a] for a in trained], axis=0)))]
    own = {a: PP_GRID[int(np.argmax(train_grid[a]))] for a in arms}

    rows_common, rows_own = {}, {}
    for arm, (net, _) in arms.items():
        probs = probabilities(net, [im for im, _ in test])
        labels = [lab for _, lab in test]
        rows_common[arm] = score(probs, labels, common)
        rows_own[arm] = score(probs, labels, own[arm])

    def table(title, rows, pps):
        print(f"\n{title}")
        print("| arm | steps | best step | post-processing | AP@0.5 | F1@0.5 | mean matched IoU | AP@0.75 "
              "| touching cells found | touching pairs merged |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for arm, m in rows.items():
            res = arms[arm][1]
            steps = "-" if res is None else str(res.steps)
            best = "-" if res is None else str(res.best_step)
            print(f"| {arm} | {steps} | {best} | {pp_str(pps[arm])} | {m['ap50']:.3f} | {m['f1']:.3f} | "
                  f"{m['mean_iou']:.3f} | {m.get('ap75', float('nan')):.3f} | "
                  f"{m['touching']['recall']:.3f} of {m['touching']['objects']} | "
                  f"{m['touching']['merged']} of {m['touching']['pairs']} |")
        a = rows[trained[0]]
        for other in trained[1:]:
            b = rows[other]
            print(f"{other[:3]} vs (a): AP@0.5 {b['ap50'] - a['ap50']:+.3f} (ratio {b['ap50'] / max(a['ap50'], 1e-9):.2f}), "
                  f"F1 {b['f1'] - a['f1']:+.3f}, mean matched IoU {b['mean_iou'] - a['mean_iou']:+.3f}")

    print(f"start: {start_name}; train {list(TRAIN)}, test {test_names}; {args.minutes} min per arm, "
          f"seed {args.seed}, patch 256, batch 4, lr {args.lr}, 1 thread")
    table(f"Held-out 6 frames, common post-processing chosen on the 2 training frames ({pp_str(common)})",
          rows_common, {a: common for a in arms})
    table("Held-out 6 frames, each model's own post-processing chosen on the 2 training frames", rows_own, own)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
