"""What the Deep-supervision widget's work costs, side by side with MONAI.

On one synthetic nuclei image (``--size``, default 1024²), with the bundled U-Net++:

1. every side output from one tiled pass (``predict_depths_iter``) vs the main output alone
   (``predict``) vs one separate pruned pass per depth (what showing every depth would cost
   without side outputs);
2. each pruned depth through ``predict_pruned_iter`` (the widget's "Run pruned"): ms per
   megapixel and speed-up over the full network, AP@0.5 against the image's true masks;
3. the peer: MONAI's ``BasicUNetPlusPlus(deep_supervision=True)`` with the same widths and
   ``sliding_window_inference`` (roi 512, overlap 0.125, the default constant blending), random
   weights (only its time matters), returning all its side outputs; the ratio is ours / MONAI's.

Best of ``--repeats`` after a warm-up, ``--threads`` torch threads.

    python benchmarks/bench_supervision.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import best_of  # noqa: E402

from napari_unet.inference.predictor import Predictor, predict_iter, run_to_end  # noqa: E402
from napari_unet.inference.supervision import (deep_supervision_predictor, labels_from,  # noqa: E402
                                               predict_depths_iter, predict_pruned_iter, score_labels)
from napari_unet.modelfile import load_model  # noqa: E402
from napari_unet.synthetic import fluorescent_nuclei  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    image, truth = fluorescent_nuclei((args.size, args.size), int(60 * (args.size / 512) ** 2), seed=7)[:2]
    mpx = image.size / 1e6
    lm = load_model("unet++")
    depth = lm.net.depth
    print(f"bundled unet++ ({lm.net.n_parameters:,} parameters), {args.size}² image, {args.threads} thread(s), "
          f"best of {args.repeats}")

    ds = deep_supervision_predictor(lm, device="cpu")
    plain = Predictor(lm, device="cpu")
    pruned = Predictor(lm, device="cpu")
    for p in (ds, plain, pruned):
        p.warm_up(image.shape)
    t_all, depths = best_of(lambda: run_to_end(predict_depths_iter(lm, image, predictor=ds)), args.repeats)
    t_main, _ = best_of(lambda: run_to_end(predict_iter(lm, image, predictor=plain)), args.repeats)
    runs, t_sep = {}, 0.0
    for k in [None] + list(range(depth - 1, 0, -1)):
        t, run = best_of(lambda k=k: run_to_end(predict_pruned_iter(lm, image, k, predictor=pruned)), args.repeats)
        runs[k] = (t, run)
        t_sep += t
    print("\n1. every depth at once")
    print("| what | ms / Mpx | vs main output only |\n|---|---|---|")
    for name, t in (("main output only (predict)", t_main), ("all depths, one pass (predict_depths_iter)", t_all),
                    (f"all depths, {depth} separate pruned passes", t_sep)):
        print(f"| {name} | {1000 * t / mpx:.0f} | {t / t_main:.2f}x |")

    print("\n2. pruned sub-networks (Run pruned)")
    print("| depth | ms / Mpx | speed-up over full | AP@0.5 | Dice |\n|---|---|---|---|---|")
    full_ms = None
    for k, (seconds, run) in runs.items():
        pred = run.prediction
        labels = labels_from(pred.probabilities, pred.target, 2, **lm.postprocess)
        score = score_labels(str(k), truth, labels, 2)
        t = 1000 * seconds / mpx
        full_ms = full_ms or t
        print(f"| {'full (' + str(depth) + ')' if k is None else k} | {t:.0f} | {full_ms / t:.1f}x | "
              f"{score.ap50:.3f} | {score.dice:.3f} |")
    side = [score_labels(n, truth, labels_from(depths.probabilities[i], depths.target, 2, **lm.postprocess), 2).ap50
            for i, n in enumerate(depths.names)]
    print("side outputs of the one pass, AP@0.5: " + ", ".join(f"{n} {a:.3f}" for n, a in zip(depths.names, side)))

    try:
        from monai.inferers import sliding_window_inference
        from monai.networks.nets import BasicUNetPlusPlus
    except ImportError:
        print("\n3. MONAI is not installed (pip install -e '.[bench]'): no peer comparison")
        return
    feats = list(lm.net.config["features"])
    torch.manual_seed(0)
    peer = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, features=tuple(feats) + (feats[0],),
                             deep_supervision=True, norm="batch").eval()
    x = torch.from_numpy(((image - image.mean()) / image.std()).astype(np.float32))[None, None]

    def monai_all():
        with torch.inference_mode():
            return sliding_window_inference(x, (512, 512), 1, lambda t: torch.cat(
                [torch.softmax(o, 1)[:, 1:] for o in peer(t)], 1), overlap=0.125)

    monai_all()
    t_monai, out = best_of(monai_all, args.repeats)
    print("\n3. peer: MONAI BasicUNetPlusPlus(deep_supervision=True), same widths, sliding_window_inference")
    print(f"| all {out.shape[1]} side outputs | ours {1000 * t_all / mpx:.0f} ms/Mpx | MONAI "
          f"{1000 * t_monai / mpx:.0f} ms/Mpx | ratio ours/MONAI {t_all / t_monai:.2f} |")


if __name__ == "__main__":
    main()
