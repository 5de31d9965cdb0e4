"""The human-in-the-loop quality bar: fine-tune on 3 corrected frames, score 8 others, against a
MONAI U-Net trained from scratch for the same wall time, in one process.

Phase-contrast cells of Usiigaci (``../shared/data/cells_phase_usiigaci*``, 1022x1024 frames of
migrating glioblastoma cells, many touching). The frames come from the fixed held-out split of
:mod:`napari_unet.datasets` (no bundled model trained on them): its 3 drawn frames play the
user's 3 corrected images (their published masks are the corrections, all reviewed), the 8
frames of ``cells_phase_usiigaci`` are scored. Each arm gets the same wall-time budget on the
CPU (preparation and validation included for ours):

* ``finetune:<model>``: :func:`napari_unet.finetune.finetune_iter` with the Fine-tune widget's
  defaults (:class:`~napari_unet.finetune.FinetuneSettings`) from ``<model>``, then
  :func:`~napari_unet.inference.segment.segment_iter` with the post-processing stored in the
  fine-tuned model (chosen on its validation region);
* ``monai``: MONAI's ``BasicUNet`` from scratch, the textbook loop (``DiceCELoss``, AdamW lr
  1e-3, batch 4, 256² patches with flips, rotations, zoom, elastic and intensity augmentation,
  the same per-image normalisation and the same gap target), predicted with MONAI's
  ``sliding_window_inference`` and labelled by connected components (objects under 16 px dropped).

    python benchmarks/bench_finetune_usiigaci.py --minutes 5 --seeds 0 1 2 --threads 2 \\
        --arms finetune:benchmarks/weights/unet-nuclei-only.safetensors finetune:unet monai

An arm may change the defaults to compare a lever side by side: ``finetune:unet?lr=1e-3,patch_size=256,batch_size=4``
(fields of :class:`~napari_unet.finetune.FinetuneSettings`; ``?resize=False`` trains at the frames'
own size instead of shrinking their 69 px cells to the network's object diameter). The
fine-tuned model is scored as a user would run it: at the object size stored in its file.

Published masks hold stray fragments under 50 px for some ids (see the data README):
:func:`napari_unet.datasets.read_pair` drops them before anything.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_unet import datasets  # noqa: E402
from napari_unet.finetune import FinetuneSettings, finetune_iter  # noqa: E402
from napari_unet.inference.predictor import run_to_end  # noqa: E402
from napari_unet.inference.segment import segment_iter  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import load_model  # noqa: E402

SOURCE = datasets.SOURCES["cells"]
#: the nuclei-only U-Net bundled before the versatile default (never saw phase contrast)
NUCLEI_ONLY = ROOT / "benchmarks" / "weights" / "unet-nuclei-only.safetensors"


def frames():
    """``(corrected {name: pair}, scored {name: pair})`` from the fixed held-out split."""
    _, held = datasets.split(SOURCE)
    scored = [n for n in held if n in SOURCE.held_out]
    corrected = [n for n in held if n not in SOURCE.held_out]
    return ({n: datasets.read_pair(SOURCE, n) for n in corrected},
            {n: datasets.read_pair(SOURCE, n) for n in scored})


def score_model(model, scored) -> dict:
    return mean_metrics([evaluate(lab, run_to_end(segment_iter(model, im, device="cpu")).labels)
                         for im, lab in scored.values()])


def parse_arm(arm: str) -> tuple[str, dict]:
    """``finetune:<model>[?field=value,...]`` -> (model, settings overrides)."""
    model, _, extra = arm.split(":", 1)[1].partition("?")
    overrides = {}
    for item in filter(None, extra.split(",")):
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value  # a plain string (a loss preset, "border")
    return model, overrides


def run_finetune(arm: str, corrected, scored, minutes: float, seed: int, out: str) -> dict:
    base, overrides = parse_arm(arm)
    loaded = load_model(base)
    triples = [(im, lab, None) for im, lab in corrected.values()]
    settings = FinetuneSettings(**{"minutes": minutes, "seed": seed, "device": "cpu", **overrides})
    t0 = time.perf_counter()
    result = run_to_end(finetune_iter(loaded, triples, settings, out_dir=out, name=f"ft-{seed}-{time.time_ns()}"))
    seconds = time.perf_counter() - t0
    if result.path is None and result.discarded:  # not better than the base on validation: the user keeps the base
        return {**score_model(loaded, scored), "steps": result.steps, "seconds": seconds, "val": None,
                "note": result.discarded}
    if result.path is None:
        return {"ap50": float("nan"), "steps": result.steps, "seconds": seconds, "note": result.stopped}
    scores = score_model(load_model(result.path), scored)
    return {**scores, "steps": result.steps, "seconds": seconds, "val": result.metrics.get("ap50"),
            "tuned": result.tuned_ap50, "kept": result.discarded or f"{result.weights} weights",
            "pp": {**result.postprocess, **({"weights": "base's"} if result.weights == "base" else {})}}


def run_monai(corrected, scored, minutes: float, seed: int) -> dict:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet
    from scipy import ndimage as ndi

    from bench_train import monai_loader

    from napari_unet.inference.postprocess import _remove_small
    from napari_unet.modelfile import DEFAULT_NORMALIZATION
    from napari_unet.training.patches import prepare_image

    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)
    loader = monai_loader(list(corrected.values()), seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    net.train()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < minutes * 60:
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(net(batch["image"]), batch["label"]).backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - t0 >= minutes * 60:
                break
    seconds = time.perf_counter() - t0
    net.eval()
    scores = []
    with torch.no_grad():
        for image, labels in scored.values():
            x = torch.from_numpy(prepare_image(image, labels, DEFAULT_NORMALIZATION).image[None])
            probs = torch.softmax(sliding_window_inference(x, (256, 256), 4, net, overlap=0.25), 1)[0, 1].numpy()
            pred, _ = ndi.label(probs > 0.5)
            scores.append(evaluate(labels, _remove_small(pred.astype(np.int32), 16)))
    return {**mean_metrics(scores), "steps": steps, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-time budget per arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=[f"finetune:{NUCLEI_ONLY}", "finetune:unet", "monai"],
                        help="finetune:<model> (a bundled name or a model file) and/or monai")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not datasets.available(SOURCE):
        print(f"No Usiigaci frames under {datasets.data_root()}: nothing to measure.")
        return 2
    corrected, scored = frames()
    print(f"fine-tune on {', '.join(corrected)}; score {', '.join(scored)}; {args.minutes:g} min per arm, "
          f"{args.threads} thread(s), torch {torch.__version__}", flush=True)
    bases = {parse_arm(arm)[0] for arm in args.arms if arm.startswith("finetune:")}
    for base in sorted(bases):
        print(f"  before fine-tuning, {base}: AP@0.5 {score_model(load_model(base), scored)['ap50']:.3f}", flush=True)
    rows = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            for arm in args.arms:  # the arms alternate, so a drift of the machine hits them alike
                if arm == "monai":
                    r = run_monai(corrected, scored, args.minutes, seed)
                else:
                    r = run_finetune(arm, corrected, scored, args.minutes, seed, out)
                rows[arm].append(r)
                extra = f", val {r['val']:.3f}, with its pp {r['tuned']}, pp {r['pp']}; {r['kept']}" \
                    if r.get("val") is not None else \
                    f" ({r['note']})" if r.get("note") else ""
                print(f"seed {seed} {arm}: AP@0.5 {r['ap50']:.3f} (F1 {r.get('f1', float('nan')):.3f}), "
                      f"{r['steps']} steps in {r['seconds']:.0f} s{extra}", flush=True)
    print("\narm                                         AP@0.5 mean (sd, n)    vs MONAI")
    peer = np.mean([r["ap50"] for r in rows.get("monai", [])]) if "monai" in rows else None
    for arm, rs in rows.items():
        values = [r["ap50"] for r in rs]
        ratio = f"{np.mean(values) / peer:.2f}x" if peer else "-"
        print(f"{arm[-42:]:<42s}  {np.mean(values):.3f} ({np.std(values):.3f}, {len(values)})    {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
