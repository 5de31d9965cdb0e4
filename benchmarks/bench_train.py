"""Training throughput: napari-unet's trainer against a plain MONAI training loop, one process.

Same network (the registry's ``unet``, same seeded initial weights), batch 4, 256² patches,
AdamW (lr 1e-3, weight decay 1e-4), cross-entropy + soft Dice, on the same images (the DSB2018
nuclei from ``../shared/data/nuclei_dsb2018`` when present, else synthetic nuclei), normalised
once beforehand in both loops. Augmentation matches in kind and probability:

- ours: ``train_iter`` with its defaults (80 % of patches on a nucleus; flips / quarter turns;
  scale (p 0.3) and the U-Net paper's elastic deformation (p 0.5) in one resampling; intensity
  scale / shift / gamma (p 0.8); noise (p 0.3)); no validation, no checkpoints;
- MONAI: ``Dataset`` + ``DataLoader`` (no worker processes, like ours) with
  ``RandCropByPosNegLabeld`` (pos 0.8), ``RandFlipd`` x2 + ``RandRotate90d``, ``RandZoomd``
  (p 0.3, 0.8-1.25), ``Rand2DElasticd`` (p 0.5, 3x3-grid spacing, magnitude 0-10 px),
  ``RandScaleIntensityd`` + ``RandShiftIntensityd`` + ``RandAdjustContrastd`` (p 0.8),
  ``RandGaussianNoised`` (p 0.3); ``DiceCELoss``; the textbook loop (zero_grad, forward, loss,
  backward, step).

The arms alternate for ``--rounds`` rounds of ``--steps`` timed steps (after 2 untimed ones), so
drifts in the machine's speed hit both; the ratio printed is the median of per-round ratios of
iterations per second. Where the time goes is printed too (data vs network per step). Training
in the channels-last layout was tried as well (2026-11-21): no gain here (1.00x), so it is not used.

    .venv/bin/python benchmarks/bench_train.py --threads 2 [--steps 20 --rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuclei_dsb2018"
PATCH, BATCH, LR, WD = 256, 4, 1e-3, 1e-4


def load_pairs(n_synthetic: int = 8):
    import tifffile

    from napari_unet.synthetic import fluorescent_nuclei

    images = sorted((DATA / "images").glob("*.tif"))
    if images:
        return "DSB2018 nuclei", [(tifffile.imread(p), tifffile.imread(DATA / "masks" / p.name).astype(np.int32))
                                  for p in images]
    return "synthetic nuclei", [fluorescent_nuclei((384, 384), 60, seed=i) for i in range(n_synthetic)]


def ours(net, pairs, steps: int, seed: int):
    """Seconds per step of ``train_iter`` over ``steps`` steps after two untimed ones."""
    from napari_unet.training import train_iter

    gen = train_iter(net, pairs, (), patch_size=PATCH, batch_size=BATCH, lr=LR, weight_decay=WD,
                     epochs=1, steps_per_epoch=steps + 2, seed=seed, device="cpu", warmup_steps=0)
    times = []
    for event in gen:
        times.append(time.perf_counter())
    return (times[-1] - times[1]) / (len(times) - 2)


def monai_loader(pairs, seed: int):
    from monai.data import DataLoader, Dataset
    from monai.transforms import (Compose, Rand2DElasticd, RandAdjustContrastd, RandCropByPosNegLabeld,
                                  RandFlipd, RandGaussianNoised, RandRotate90d, RandScaleIntensityd,
                                  RandShiftIntensityd, RandZoomd)
    from monai.utils import set_determinism

    from napari_unet.modelfile import DEFAULT_NORMALIZATION
    from napari_unet.training.patches import binary_target, prepare_image

    set_determinism(seed)
    items = []
    for image, labels in pairs:
        prepared = prepare_image(image, labels, DEFAULT_NORMALIZATION)  # the same normalisation as ours
        items.append({"image": prepared.image.astype(np.float32),
                      "label": binary_target(labels)[None].astype(np.float32)})
    keys = ("image", "label")
    spacing = (PATCH - 1) / 2  # a 3x3 control grid, as the paper (and ours)
    transform = Compose([
        RandCropByPosNegLabeld(keys, "label", (PATCH, PATCH), pos=0.8, neg=0.2, num_samples=1),
        RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.75, max_k=3),
        RandZoomd(keys, prob=0.3, min_zoom=0.8, max_zoom=1.25, mode=("bilinear", "nearest"), keep_size=True),
        Rand2DElasticd(keys, spacing=(spacing, spacing), magnitude_range=(0, 10), prob=0.5,
                       mode=("bilinear", "nearest"), padding_mode="reflection"),
        RandScaleIntensityd("image", factors=0.25, prob=0.8), RandShiftIntensityd("image", offsets=0.1, prob=0.8),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.8),
        RandGaussianNoised("image", std=0.05, prob=0.3),
    ])
    return DataLoader(Dataset(items, transform), batch_size=BATCH, shuffle=True, num_workers=0)


def monai_loop(net, loader, steps: int):
    """Seconds per step (and the data share) of the textbook MONAI loop."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    net.train()
    done, data_s, t0 = 0, 0.0, None
    while done < steps + 2:
        t_data = time.perf_counter()
        for batch in loader:
            x, y = batch["image"], batch["label"]
            if done >= 2:
                data_s += time.perf_counter() - t_data
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            done += 1
            if done == 2:
                t0 = time.perf_counter()
            if done == steps + 2:
                break
            t_data = time.perf_counter()
    return (time.perf_counter() - t0) / steps, data_s / steps


def our_data_seconds(pairs, n: int, seed: int) -> float:
    """Seconds per batch of our patch sampler alone (augmentation included)."""
    from napari_unet.modelfile import DEFAULT_NORMALIZATION
    from napari_unet.training.patches import PatchSampler, prepare_image

    images = [prepare_image(im, lab, DEFAULT_NORMALIZATION) for im, lab in pairs]
    sampler = PatchSampler(images, PATCH, np.random.default_rng(seed))
    sampler.batch(BATCH)
    t = time.perf_counter()
    for _ in range(n):
        sampler.batch(BATCH)
    return (time.perf_counter() - t) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import monai
    except ImportError:
        sys.exit("MONAI is not installed: NAPARI_UNET_EXTRAS=test,bench bash scripts/setup.sh")
    torch.set_num_threads(args.threads)
    from napari_unet.models import build_model

    what, pairs = load_pairs()
    torch.manual_seed(args.seed)
    initial = build_model("unet").state_dict()
    print(f"{what}: {len(pairs)} images; unet {sum(v.numel() for k, v in initial.items() if 'running' not in k and 'num_batches' not in k):,} parameters; "
          f"batch {BATCH}, {PATCH}² patches, {args.threads} thread(s), torch {torch.__version__}, MONAI {monai.__version__}",
          flush=True)
    loader = monai_loader(pairs, args.seed)
    rows = []
    for r in range(args.rounds):
        net = build_model("unet")
        net.load_state_dict(initial)
        s_ours = ours(net, pairs, args.steps, args.seed + r)
        net = build_model("unet")
        net.load_state_dict(initial)
        s_monai, data_monai = monai_loop(net, loader, args.steps)
        rows.append((s_ours, s_monai, data_monai))
        print(f"round {r + 1}: ours {1 / s_ours:.3f} it/s ({s_ours:.2f} s/step), MONAI {1 / s_monai:.3f} it/s "
              f"({s_monai:.2f} s/step, {data_monai:.3f} s of it data); ours/MONAI {s_monai / s_ours:.2f}x", flush=True)
    data_ours = our_data_seconds(pairs, 10, args.seed)
    ratio = statistics.median(m / o for o, m, _ in rows)
    print(f"\ndata per batch: ours {data_ours:.3f} s, MONAI {statistics.median(d for *_, d in rows):.3f} s")
    print(f"iterations per second, ours / MONAI (median of {args.rounds} rounds): {ratio:.2f}x (target >= 1.3)")


if __name__ == "__main__":
    main()
