"""Score candidate bundled 2D models side by side on every source's held-out images.

For each model (a bundled name or a model file): AP@0.5 per source of :mod:`napari_unet.datasets`
(the fixed held-out splits, whole images, the predictor and the post-processing stored in the
model file), and on the phase-contrast cells the objects that touch another (within 2 px): the
share found at IoU 0.5 and the touching pairs merged into one predicted object. Also the
prediction time per pixel on a 1024² image, with the same threads for every model.

    python benchmarks/bench_bundled_candidates.py unet runs/unet-binary.safetensors \\
        runs/unet-boundary.safetensors --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_weightmap_cells import touching_scores  # noqa: E402

from napari_unet import datasets  # noqa: E402
from napari_unet.inference.predictor import predict, run_to_end  # noqa: E402
from napari_unet.inference.segment import segment_iter  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import load_model  # noqa: E402
from napari_unet.synthetic import fluorescent_nuclei  # noqa: E402


def us_per_pixel(model) -> float:
    image, _ = fluorescent_nuclei((1024, 1024), 200, seed=7)
    predict(model, image[:256, :256], device="cpu")  # warm-up
    t = time.perf_counter()
    predict(model, image, device="cpu")
    return (time.perf_counter() - t) / image.size * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", nargs="+", default=sorted(datasets.SOURCES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    held = {s: datasets.load(s, "held_out") for s in args.sources if datasets.available(s)}
    if not held:
        print(f"No data under {datasets.data_root()}: nothing to score.")
        return 2
    print("held out: " + ", ".join(f"{s} {len(v)} images" for s, v in held.items())
          + f"; {args.threads} thread(s), torch {torch.__version__}", flush=True)
    rows = []
    for name in args.models:
        model = load_model(name)
        row = {"model": name, "target": model.target, "pp": model.postprocess, "us": us_per_pixel(model)}
        for source, pairs in held.items():
            preds = [run_to_end(segment_iter(model, im, device="cpu")).labels for im, _ in pairs.values()]
            gts = [lab for _, lab in pairs.values()]
            row[source] = mean_metrics([evaluate(g, p) for g, p in zip(gts, preds)])["ap50"]
            if source == "cells":
                row["touching"] = touching_scores(gts, preds)
        rows.append(row)
        touch = row.get("touching")
        print(f"{name}: " + ", ".join(f"{s} AP@0.5 {row[s]:.3f}" for s in held)
              + (f"; touching cells found {touch['recall']:.3f} of {touch['objects']}, merged pairs "
                 f"{touch['merged']} of {touch['pairs']}" if touch else "")
              + f"; {row['us']:.2f} µs/px ({row['target']}, {row['pp']})", flush=True)
    print("\n| model | " + " | ".join(f"{s} AP@0.5" for s in held) + " | touching cells found | merged pairs | µs/px |")
    print("|---|" + "---|" * (len(held) + 3))
    for row in rows:
        touch = row.get("touching") or {"recall": float("nan"), "merged": "-", "pairs": "-"}
        print(f"| {row['model']} | " + " | ".join(f"{row[s]:.3f}" for s in held)
              + f" | {touch['recall']:.3f} | {touch['merged']} / {touch['pairs']} | {row['us']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
