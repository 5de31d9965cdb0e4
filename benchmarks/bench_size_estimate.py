"""Does a model that works at one object size give a good result on the first click, with the size estimated?

A model that declares its object diameter (``input.object_diameter``) segments each held-out
image three ways, and the current bundled ``unet`` (or ``--peer``) once at the image's own size:

- **estimated**: the size estimated from first passes (``inference/estimate.py``, no labels),
- **oracle**: the size measured on the image's true masks (what **Measure on labels** gives),
- **native**: the image as it is (the model's own default size),

all scored by AP@0.5 against the true masks, on the held-out images of both sources (never
trained on: ``napari_unet.datasets`` splits). Also printed: the estimated / true diameter ratio
and the seconds an estimate takes.

    python benchmarks/bench_size_estimate.py runs/unet-d30.safetensors [--peer unet] [--threads 2]
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

from napari_unet import datasets  # noqa: E402
from napari_unet.inference.estimate import estimate_diameter  # noqa: E402
from napari_unet.inference.predictor import Predictor, run_to_end  # noqa: E402
from napari_unet.inference.segment import segment_iter  # noqa: E402
from napari_unet.metrics import evaluate  # noqa: E402
from napari_unet.scaling import median_diameter  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model file (or bundled name) that declares its object size")
    parser.add_argument("--peer", default="unet", help="a model run at the images' own size (default: unet)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=0, help="at most this many per source (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, peer = Predictor(args.model, device="cpu"), Predictor(args.peer, device="cpu")
    if not model.model.object_diameter:
        print(f"{args.model} declares no object size")
        return 2
    print(f"model {model.model.name} (objects of {model.model.object_diameter:g} px), peer {peer.model.name}, "
          f"{args.threads} threads")
    summary = []
    for name in ("nuclei", "cells"):
        source = datasets.SOURCES[name]
        if not datasets.available(source):
            print(f"{name}: data not on this machine, skipped")
            continue
        pairs = list(datasets.load(source, "held_out").items())
        pairs = pairs[:args.images] if args.images else pairs
        rows = []
        for image_name, (image, truth) in pairs:
            truth_d = median_diameter(truth)
            t = time.perf_counter()
            est = estimate_diameter(model.model, image, predictor=model)
            seconds = time.perf_counter() - t
            scores = []
            # native: the model's own size, i.e. the image as it is (None would estimate for a general model)
            for diameter in (est.diameter, truth_d, model.model.object_diameter):
                seg = run_to_end(segment_iter(model.model, image, predictor=model, diameter=diameter))
                scores.append(evaluate(truth, seg.labels)["ap50"])
            seg = run_to_end(segment_iter(peer.model, image, predictor=peer))
            scores.append(evaluate(truth, seg.labels)["ap50"])
            ratio = (est.diameter or 0) / truth_d
            rows.append(scores + [ratio, seconds])
            print(f"  {name} {image_name[:12]:12s} true {truth_d:5.1f} px  estimated {est.diameter or 0:5.1f} px "
                  f"({ratio:.2f}x, {len(est.passes)} passes, {seconds:.1f} s)  AP estimated {scores[0]:.3f} "
                  f"oracle {scores[1]:.3f} native {scores[2]:.3f} peer {scores[3]:.3f}", flush=True)
        r = np.array(rows)
        summary.append((name, len(r), *r[:, :4].mean(0), np.median(r[:, 4]),
                        np.mean(np.abs(np.log2(np.maximum(r[:, 4], 1e-3))) < np.log2(1.25)), r[:, 5].mean()))
    print(f"\n{'source':8s} {'images':>6s} {'estimated':>9s} {'oracle':>7s} {'native':>7s} {'peer':>7s} "
          f"{'est/true':>8s} {'within 25%':>10s} {'s/estimate':>10s}")
    for name, n, e, o, nat, p, ratio, within, sec in summary:
        print(f"{name:8s} {n:6d} {e:9.3f} {o:7.3f} {nat:7.3f} {p:7.3f} {ratio:8.2f} {100 * within:9.0f}% {sec:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
