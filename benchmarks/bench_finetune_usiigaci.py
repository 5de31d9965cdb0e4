"""The human-in-the-loop quality bar: fine-tune on 2 corrected frames, score the other 6.

On the phase-contrast cells of Usiigaci (``../shared/data/cells_phase_usiigaci``: 8 frames
1022x1024 of migrating glioblastoma cells, many touching), starting from a bundled model:
"correct" 2 frames (their published masks play the user's corrections), fine-tune with the
Fine-tune widget's defaults (:class:`napari_unet.finetune.FinetuneSettings`) for a CPU budget,
and report AP@0.5 on the 6 other frames before and after, for each loss preset asked for
(default: the U-Net paper's weight-map cross-entropy against plain cross-entropy), over seeds.

    python benchmarks/bench_finetune_usiigaci.py --minutes 5 --seeds 0 1 --threads 2

Published masks hold stray fragments under 50 px for some ids (see the data README): every
id is reduced to its largest connected part before scoring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.finetune import FinetuneSettings, finetune_iter  # noqa: E402
from napari_unet.inference.predictor import run_to_end  # noqa: E402
from napari_unet.inference.segment import segment_iter  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import load_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cells_phase_usiigaci"
CORRECTED = ("set01", "set05")


def clean(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected part of every id (drops the published stray fragments)."""
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        parts, n = ndi.label(labels[sl] == i)
        if n:
            biggest = np.argmax(np.bincount(parts.ravel())[1:]) + 1
            out[sl][parts == biggest] = i
    return out


def load(folder: Path):
    frames = {}
    for p in sorted((folder / "images").glob("*.tif")):
        frames[p.stem] = (tifffile.imread(p), clean(tifffile.imread(folder / "masks" / p.name).astype(np.int32)))
    return frames


def score(model, frames) -> float:
    return mean_metrics([evaluate(lab, run_to_end(segment_iter(model, im, device="cpu")).labels) for im, lab in frames])["ap50"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default="unet")
    parser.add_argument("--minutes", type=float, default=None, help="budget (default: the widget's)")
    parser.add_argument("--presets", nargs="+", default=["weight-map CE (U-Net paper)", "plain CE"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--patch-size", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = load(Path(args.data))
    corrected = [(frames[k][0], frames[k][1], None) for k in CORRECTED]
    test = [v for k, v in frames.items() if k not in CORRECTED]
    base = load_model(args.model)
    before = score(base, test)
    print(f"base {args.model}: AP@0.5 on the {len(test)} other frames = {before:.3f}")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for preset in args.presets:
            for seed in args.seeds:
                settings = FinetuneSettings(loss=preset, seed=seed, device="cpu")
                for key, value in (("minutes", args.minutes), ("target", args.target), ("lr", args.lr),
                                   ("patch_size", args.patch_size)):
                    if value is not None:
                        setattr(settings, key, value)
                t0 = time.perf_counter()
                result = run_to_end(finetune_iter(base, corrected, settings, out_dir=out,
                                                  name=f"ft-{seed}-{len(rows)}"))
                after = score(load_model(result.path), test)
                rows.append((preset, seed, result.steps, time.perf_counter() - t0, result.metrics.get("ap50"), after))
                print(f"{preset:<42s} seed {seed}: {result.steps} steps, {rows[-1][3]:.0f} s, "
                      f"val AP {rows[-1][4]:.3f}, test AP@0.5 {before:.3f} -> {after:.3f} ({after - before:+.3f})",
                      flush=True)
    print("\npreset                                     mean test AP@0.5   gain")
    for preset in args.presets:
        values = [r[5] for r in rows if r[0] == preset]
        print(f"{preset:<42s} {np.mean(values):.3f} (n={len(values)}, sd {np.std(values):.3f})  "
              f"{np.mean(values) - before:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
