"""Does a model that works at one object size give a good result on the first click, with the size estimated?

Each model that declares its object diameter (``input.object_diameter``) segments each held-out
image up to three ways (``--arms``):

- **estimated**: the size estimated from first passes (``inference/estimate.py``, no labels),
  what the Segment dock and ``napari-unet predict`` do on the first click;
- **oracle**: the size measured on the image's true masks (what **Measure on labels** gives);
- **native**: the image as it is (the model's own default size);

and the ``--peer`` (by default the current bundled ``unet``) once, as a user would run it
(``--peer-size estimated``: its size estimated when it declares one) or at the image's own size
(``own``). All are scored by AP@0.5 against the true masks, on the held-out images of both
sources (never trained on: ``napari_unet.datasets`` splits). Also printed: the estimated / true
diameter ratio and the seconds an estimate takes.

    python benchmarks/bench_size_estimate.py runs/unet-d30.safetensors [--peer unet] [--threads 2]
    python benchmarks/bench_size_estimate.py unet unet++ resunet --arms estimated --peer none   # re-score a family
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


ARMS = ("estimated", "oracle", "native")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model files (or bundled names) that declare their object size")
    parser.add_argument("--peer", default="unet", help="a model run beside them (default: unet; none: no peer)")
    parser.add_argument("--peer-size", choices=("estimated", "own"), default="estimated",
                        help="the peer's object size: estimated as on the first click, or the image's own size")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"which of {', '.join(ARMS)} to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=0, help="at most this many per source (0: all)")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS) or not arms:
        parser.error(f"--arms takes some of {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    models = [Predictor(m, device="cpu") for m in args.models]
    peer = None if args.peer == "none" else Predictor(args.peer, device="cpu")
    for path, model in zip(args.models, models):
        if not model.model.object_diameter:
            print(f"{path} declares no object size")
            return 2
    print("models " + ", ".join(f"{m.model.name} (objects of {m.model.object_diameter:g} px)" for m in models)
          + (f"; peer {peer.model.name} at the {'estimated' if args.peer_size == 'estimated' else 'own'} size"
             if peer else "") + f"; {args.threads} threads")
    summary = []
    for name in ("nuclei", "cells"):
        source = datasets.SOURCES[name]
        if not datasets.available(source):
            print(f"{name}: data not on this machine, skipped")
            continue
        pairs = list(datasets.load(source, "held_out").items())
        pairs = pairs[:args.images] if args.images else pairs
        rows = {m.model.name: [] for m in models}
        peer_scores = []
        for image_name, (image, truth) in pairs:
            truth_d = median_diameter(truth)
            line = f"  {name} {image_name[:12]:12s} true {truth_d:5.1f} px"
            for model in models:
                t = time.perf_counter()
                est = estimate_diameter(model.model, image, predictor=model) if "estimated" in arms else None
                seconds = time.perf_counter() - t
                # native: the model's own size, i.e. the image as it is (None would estimate for a general model)
                sizes = {"estimated": est.diameter if est else None, "oracle": truth_d,
                         "native": model.model.object_diameter}
                scores = {}
                for arm in arms:
                    seg = run_to_end(segment_iter(model.model, image, predictor=model, diameter=sizes[arm]))
                    scores[arm] = evaluate(truth, seg.labels)["ap50"]
                ratio = (est.diameter or 0) / truth_d if est else float("nan")
                rows[model.model.name].append((scores, ratio, seconds))
                line += (f" | {model.model.name}" + (f" est {est.diameter or 0:5.1f} px ({ratio:.2f}x, "
                                                     f"{len(est.passes)} passes, {seconds:.1f} s)" if est else "")
                         + "".join(f" {arm} {v:.3f}" for arm, v in scores.items()))
            if peer is not None:
                size = None if args.peer_size == "estimated" else (peer.model.object_diameter or None)
                seg = run_to_end(segment_iter(peer.model, image, predictor=peer, diameter=size))
                peer_scores.append(evaluate(truth, seg.labels)["ap50"])
                line += f" | peer {peer_scores[-1]:.3f}"
            print(line, flush=True)
        for model_name, r in rows.items():
            ratios = np.array([x[1] for x in r])
            summary.append((name, model_name, len(r), {arm: np.mean([x[0][arm] for x in r]) for arm in arms},
                            np.median(ratios), np.mean(np.abs(np.log2(np.maximum(ratios, 1e-3))) < np.log2(1.25)),
                            np.mean([x[2] for x in r])))
        if peer is not None:
            summary.append((name, f"peer {peer.model.name}", len(peer_scores), {"peer": np.mean(peer_scores)},
                            float("nan"), float("nan"), float("nan")))
    print(f"\n{'source':8s} {'model':20s} {'images':>6s} " + " ".join(f"{a:>9s}" for a in (*arms, "peer"))
          + f" {'est/true':>8s} {'within 25%':>10s} {'s/estimate':>10s}")
    for name, model_name, n, scores, ratio, within, sec in summary:
        cells = " ".join(f"{scores[a]:9.3f}" if a in scores else f"{'':9s}" for a in (*arms, "peer"))
        tail = "" if np.isnan(ratio) else f" {ratio:8.2f} {100 * within:9.0f}% {sec:10.1f}"
        print(f"{name:8s} {model_name[:20]:20s} {n:6d} {cells}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
