"""Does a distance-to-boundary map, regressed beside the foreground, separate touching nuclei
better than the bundled `unet`'s gap target? (issue 17's alternative representation)

``train``: the bundled `unet` (binary target: foreground with a 2 px gap between touching
objects) gets a third output channel that regresses each object's distance to its boundary,
normalised to 1 at the object's deepest pixel (``sigmoid``), trained beside the class logits
(CE + Dice with the gap weighted x5, as the bundled model, + ``--dist-weight`` x L1 on the
distance) on the same data as ``scripts/train_bundled.py`` (nuclei + cells + synthetic, objects
resized to 30 px, the same set-aside and held-out splits). Wall-time budget (validations
included), checkpoints
(``--checkpoint``, ``--resume``), the best step chosen on the set-aside training images.

``score``: both models side by side on every held-out image (objects resized to 30 px):
the bundled `unet` with its stored post-processing, the distance model's foreground with the
same binary post-processing, and the distance model decoded by a seeded watershed on the
predicted distance (seeds where it exceeds ``seed``; the post-processing chosen on the
set-aside training images). Prints AP@0.5 per source, the objects within 2 px of another
found at IoU 0.5 and such pairs merged. (Held-out images are resized so that their objects'
annotated median diameter becomes 30 px, as the training images.)

``ceiling``: both decodings on the true maps of the held-out images (a perfect network's score).

    python benchmarks/bench_distance_target.py train --minutes 100 --threads 1 \\
        --checkpoint runs/unet-dist.ckpt --resume --out runs/unet-dist.safetensors
    python benchmarks/bench_distance_target.py score runs/unet-dist.safetensors --threads 2
    python benchmarks/bench_distance_target.py ceiling
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_bundled as tb  # noqa: E402
from bench_weightmap_cells import touching_scores  # noqa: E402

from napari_unet.inference.postprocess import _remove_small, probabilities_to_labels  # noqa: E402
from napari_unet.io import atomic_write  # noqa: E402
from napari_unet.metrics import evaluate, mean_metrics  # noqa: E402
from napari_unet.modelfile import DEFAULT_NORMALIZATION, load_model  # noqa: E402
from napari_unet.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint  # noqa: E402
from napari_unet.training.losses import SegmentationLoss  # noqa: E402
from napari_unet.training.patches import (IGNORE, PatchSampler, binary_target, prepare_image,  # noqa: E402
                                          touching_boundaries)

GAP = -1.0  # the carried map's value on gap pixels (the distance is >= 0 elsewhere)
SEEDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def normalised_distance(target: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each object's distance to its boundary (the gap between touching objects counts as
    boundary) divided by its largest; 0 on the background."""
    fg = target == 1
    edt = ndi.distance_transform_edt(fg).astype(np.float32)
    lab, _, _ = relabel_sequential(np.where(fg, labels, 0).astype(np.int64))
    top = np.zeros(int(lab.max()) + 1, np.float32)
    np.maximum.at(top, lab.ravel(), edt.ravel())
    top[0] = 1.0
    return np.where(fg, edt / np.maximum(top[lab], 1e-6), 0.0).astype(np.float32)


def training_image(image, labels, patch):
    """A TrainingImage whose ``weights`` carry the distance map (GAP on the gap pixels), so the
    augmentation warps it as it warps loss weights (linear interpolation)."""
    ti = prepare_image(image, labels, DEFAULT_NORMALIZATION, min_size=patch, in_channels=1)
    carried = normalised_distance(ti.target, ti.labels)
    carried[touching_boundaries(ti.labels.astype(np.int64))] = GAP
    ti.weights = carried
    return ti


def with_distance_head(net: torch.nn.Module) -> torch.nn.Module:
    """The binary network with a third output channel (:meth:`set_out_channels`), the first two
    kept and the third started as a soft copy of its foreground."""
    weight, bias = net.head.weight.detach().clone(), net.head.bias.detach().clone()
    net.set_out_channels(3)
    with torch.no_grad():
        net.head.weight[:2], net.head.bias[:2] = weight, bias
        net.head.weight[2] = 0.5 * (weight[1] - weight[0])
        net.head.bias[2] = 0.5 * (bias[1] - bias[0]) - 1.0
    return net


def losses(logits, target, carried, gap_weight: float, dist_weight: float, seg: SegmentationLoss):
    weights = torch.where(carried < GAP / 2, torch.tensor(gap_weight), torch.tensor(1.0))
    total, parts = seg(logits[:, :2], target, weights)
    valid = target != IGNORE
    dist = torch.sigmoid(logits[:, 2])
    l1 = (dist - carried.clamp(min=0)).abs()[valid].mean()
    parts["dist"] = float(l1.detach())
    return total + dist_weight * l1, parts


# -- prediction and decoding ------------------------------------------------------------------

def forward_whole(net, image) -> np.ndarray:
    """(K, H, W) outputs of the whole image (normalised as in training), padded to a multiple of 16:
    K = 1 (binary: foreground) or 2 (distance model: foreground, distance)."""
    from napari_unet.inference.inputs import fit_normalizer

    x = fit_normalizer(image[None].astype(np.float32), DEFAULT_NORMALIZATION)(image[None].astype(np.float32))
    h, w = x.shape[1:]
    ph, pw = (-h) % 16, (-w) % 16
    x = np.pad(x, [(0, 0), (0, ph), (0, pw)], mode="reflect")
    with torch.inference_mode():
        z = net(torch.from_numpy(np.ascontiguousarray(x))[None])
        z = z[0] if isinstance(z, torch.Tensor) else z[-1][0]
        fg = torch.softmax(z[:2], 0)[1]
        out = [fg] if z.shape[0] == 2 else [fg, torch.sigmoid(z[2])]
        return torch.stack(out).numpy()[:, :h, :w]


def decode_distance(fg, dist, threshold: float, seed: float, min_size: int) -> np.ndarray:
    """Seeded watershed on the predicted distance inside the foreground; seeds under a quarter
    of ``min_size`` are dropped (as the boundary target's decoding does), and foreground parts
    without a seed keep one label each."""
    mask = fg > threshold
    markers, _ = ndi.label((dist > seed) & mask)
    markers, n = ndi.label(_remove_small(markers, min_size // 4) > 0)
    labels = watershed(-dist, markers, mask=mask)
    rest, _ = ndi.label(mask & (labels == 0))
    labels = np.where(rest > 0, rest + n, labels).astype(np.int32)
    return relabel_sequential(_remove_small(labels, min_size))[0].astype(np.int32)


def data(args):
    """The sources as train_bundled builds them: (train pairs, their draw weights, set-aside sets,
    held-out sets), objects at ``--object-diameter``."""
    d = tb.load_sources(args.sources, args.data_root)
    d, aside = tb.set_aside(d, args.val_images, args.seed + 1)
    dia = args.object_diameter
    d = {s: (tb.rescale_pairs(tr.values(), dia), tb.rescale_pairs(held.values(), dia)) for s, (tr, held) in d.items()}
    aside = {s: tb.rescale_pairs(p.values(), dia) for s, p in aside.items()}
    shares = tb.parse_shares(args.shares)
    pairs, weights = [], []
    groups = [(s, tr) for s, (tr, _) in d.items()]
    groups.append(("synthetic", tb.rescale_pairs(tb.synthetic_pairs(args.synthetic, args.seed), dia)))
    for s, group in groups:
        roots = [math.sqrt(lab.size) for _, lab in group]
        pairs += group
        weights += [shares.get(s, 0.0) * r / sum(roots) for r in roots]
    return pairs, weights, aside, {s: held for s, (_, held) in d.items()}


def choose(outputs: dict, sets: dict, grid) -> tuple[dict, float]:
    """The decoding (from ``grid``, a list of (name, kwargs, fn)) with the best mean AP@0.5 over sources."""
    best = None
    for name, kw, fn in grid:
        ap = np.mean([mean_metrics([evaluate(lab, fn(o, **kw)) for o, (_, lab) in zip(outputs[s], sets[s])])["ap50"]
                      for s in sets])
        if best is None or ap > best[2] + 1e-9:
            best = (name, kw, ap)
    return best


def distance_grid(minimal: bool = False):
    ths, seeds, sizes = ((0.5,), (0.5,), (16,)) if minimal else ((0.4, 0.5, 0.6, 0.7), SEEDS, (8, 16, 32))
    return [("distance", dict(threshold=t, seed=s, min_size=m), lambda o, **kw: decode_distance(o[0], o[1], **kw))
            for t, s, m in itertools.product(ths, seeds, sizes)]


def binary_grid():
    return [("binary", dict(threshold=t, min_size=m, split_touching=sp, split_depth=dp),
             lambda o, **kw: probabilities_to_labels(o[:1], **kw))
            for t, m, (sp, dp) in itertools.product(tb.THRESHOLDS, tb.MIN_SIZES, tb.SPLITS)]


# -- train ------------------------------------------------------------------------------------

def train(args) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pairs, weights, aside, _ = data(args)
    images = [training_image(im, lab, args.patch) for im, lab in pairs]
    print(f"{len(images)} training images, set aside {', '.join(f'{s} {len(p)}' for s, p in aside.items())} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    net = with_distance_head(load_model(args.init).net.float())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    state, best = TrainingState(step=0, seconds=0.0, batch_size=args.batch, patch_shape=(args.patch,) * 2), None
    if args.resume and args.checkpoint and Path(args.checkpoint).exists():
        state, best = load_checkpoint(args.checkpoint, net, opt, rng, patch_shape=(args.patch,) * 2)
        print(f"resumed at step {state.step}, {state.seconds / 60:.1f} min", flush=True)
    sampler = PatchSampler(images, args.patch, rng, image_weights=weights)
    seg = SegmentationLoss(1.0, 1.0)
    budget = args.minutes * 60
    started, before = time.perf_counter(), state.seconds  # the budget counts validations and checkpoints
    spent = before
    recent = []
    while spent < budget:
        frac = min(spent / budget, 1.0)
        lr = args.lr * min(1.0, (state.step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        x, t, c = sampler.batch(args.batch)
        net.train()
        logits = net(torch.from_numpy(x))
        loss, parts = losses(logits, torch.from_numpy(t), torch.from_numpy(c), args.gap_weight, args.dist_weight, seg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        spent = before + time.perf_counter() - started
        recent.append((float(loss.detach()), parts["dist"]))
        if state.step % args.every == 0 or spent >= budget:
            net.eval()
            outs = {s: [forward_whole(net, im) for im, _ in p] for s, p in aside.items()}
            _, kw, ap = choose(outs, aside, distance_grid(minimal=True))
            loss_mean, dist_mean = np.mean(recent, axis=0)
            recent.clear()
            print(f"step {state.step} ({spent / 60:.1f} min, lr {lr:.2e}): loss {loss_mean:.4f} (dist L1 "
                  f"{dist_mean:.4f}); set-aside AP@0.5 {ap:.4f}", flush=True)
            state.history.append((state.step, {"ap50": float(ap)}))
            if ap > state.best_ap:
                state.best_ap, state.best_step = float(ap), state.step
                best = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if args.checkpoint:
                state.seconds = before + time.perf_counter() - started
                save_checkpoint(args.checkpoint, net, opt, state, best, rng)
    net.load_state_dict(best)
    write_weights(net, args, state)
    print(f"best step {state.best_step} (set-aside AP@0.5 {state.best_ap:.4f}) -> {args.out}", flush=True)
    return 0


def write_weights(net, args, state):
    from safetensors.torch import save_file

    meta = {"init": str(args.init), "steps": state.step, "best_step": state.best_step,
            "minutes": args.minutes, "dist_weight": args.dist_weight, "lr": args.lr,
            "command": " ".join(sys.argv)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(Path(args.out), lambda tmp: save_file(tensors, tmp, metadata={"experiment": json.dumps(meta)}))


# -- score ------------------------------------------------------------------------------------

def score(args) -> int:
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    _, _, aside, held = data(args)
    base = load_model(args.peer)
    peer = base.net.float().eval()
    peer_pp = base.postprocess
    net = with_distance_head(load_model(args.init).net.float())
    net.load_state_dict(load_file(args.weights))
    net.eval()
    t0 = time.perf_counter()
    ours_aside = {s: [forward_whole(net, im) for im, _ in p] for s, p in aside.items()}
    name_d, kw_d, ap_d = choose(ours_aside, aside, distance_grid())
    name_b, kw_b, ap_b = choose(ours_aside, aside, binary_grid())
    print(f"chosen on the set-aside images: distance {kw_d} ({ap_d:.4f}); its foreground as binary {kw_b} "
          f"({ap_b:.4f}) ({time.perf_counter() - t0:.0f} s)", flush=True)
    arms = {"bundled unet, stored pp": (peer, lambda o: probabilities_to_labels(o, **peer_pp)),
            "distance model, binary pp": (net, lambda o: probabilities_to_labels(o[:1], **kw_b)),
            "distance model, distance watershed": (net, lambda o: decode_distance(o[0], o[1], **kw_d))}
    outs = {"peer": {s: [forward_whole(peer, im) for im, _ in p] for s, p in held.items()},
            "ours": {s: [forward_whole(net, im) for im, _ in p] for s, p in held.items()}}
    rows = {}
    for arm, (model, decode) in arms.items():
        o = outs["peer" if model is peer else "ours"]
        rows[arm] = {}
        for s, p in held.items():
            preds = [decode(x) for x in o[s]]
            gts = [lab for _, lab in p]
            rows[arm][s] = mean_metrics([evaluate(g, q) for g, q in zip(gts, preds)])["ap50"]
            rows[arm]["touching " + s] = touching_scores(gts, preds)
    print(f"\nheld-out images, objects at {args.object_diameter} px (true size): AP@0.5; objects within 2 px of "
          "another found at IoU 0.5; such pairs merged")
    for arm, r in rows.items():
        print(f"  {arm:36s} " + "  ".join(f"{s} {r[s]:.4f} ({r['touching ' + s]['recall']:.3f}; "
                                           f"{r['touching ' + s]['merged']} of {r['touching ' + s]['pairs']})"
                                           for s in held))
    ref = rows["bundled unet, stored pp"]
    for arm, r in rows.items():
        print(f"  ratio {arm} / bundled: " + "  ".join(f"{s} {r[s] / max(ref[s], 1e-9):.3f}" for s in held))
    return 0


# -- ceiling ----------------------------------------------------------------------------------

def ceiling(args) -> int:
    """Both decodings on the true maps of the held-out images: what a perfect network would score."""
    _, _, _, held = data(args)
    for s, pairs in held.items():
        rows = {}
        for _, lab in pairs:
            target = binary_target(lab)
            fg, dist = (target == 1).astype(np.float32), normalised_distance(target, lab)
            for seed in (0.3, 0.5):
                rows.setdefault(f"distance watershed, seed {seed}", []).append(
                    evaluate(lab, decode_distance(fg, dist, 0.5, seed, 16)))
            rows.setdefault("gap target, binary post-processing (depth 2)", []).append(
                evaluate(lab, probabilities_to_labels(fg[None], threshold=0.5, min_size=16, split_depth=2.0)))
        for name, scores in rows.items():
            print(f"{s} ({len(pairs)}): {name}: AP@0.5 {mean_metrics(scores)['ap50']:.4f}", flush=True)
    return 0


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "score", "ceiling"):
        q = sub.add_parser(name)
        q.add_argument("--sources", nargs="+", default=["nuclei", "cells"])
        q.add_argument("--data-root", type=Path, default=None)
        q.add_argument("--shares", default="nuclei=0.55,cells=0.35,synthetic=0.1")
        q.add_argument("--synthetic", type=int, default=40)
        q.add_argument("--object-diameter", type=float, default=30.0)
        q.add_argument("--val-images", type=int, default=12)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--init", default="unet", help="the binary model the distance head is added to")
    t = sub.choices["train"]
    t.add_argument("--minutes", type=float, default=100.0)
    t.add_argument("--patch", type=int, default=256)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--gap-weight", type=float, default=5.0)
    t.add_argument("--dist-weight", type=float, default=2.0)
    t.add_argument("--every", type=int, default=300, help="validate and checkpoint every this many steps")
    t.add_argument("--checkpoint", type=Path)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--out", type=Path, default=ROOT / "runs" / "unet-dist.safetensors")
    s = sub.choices["score"]
    s.add_argument("weights", type=Path)
    s.add_argument("--peer", default="unet")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": train, "score": score, "ceiling": ceiling}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
