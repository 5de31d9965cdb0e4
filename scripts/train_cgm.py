"""Train the classification-guided module (CGM) of the bundled U-Net 3+, the rest frozen.

U-Net 3+'s CGM (dropout, 1x1 conv, global max pool on the deepest encoder map) says whether an
input tile holds any object. Nothing but its own loss trains it (the paper's binary cross-entropy,
:func:`napari_unet.models.unet3p.cgm_loss`), and the bundled segmentation was trained without it,
so this script fits it afterwards on the frozen encoder: the segmentation outputs do not change
(the gate stays off by default), and the "object present" probability that the Deep-supervision
widget shows per tile means something.

Crops of 64..512 px (tiles of every size the predictor may use) are cut from the training
images of the bundled model (DSB2018 minus its held-out images, plus synthetic nuclei) after
whole-image normalisation, as in prediction; a crop is "present" with >= 20 object pixels,
"empty" with none (crops with 1..19 are ambiguous and skipped), sampled half and half. The
held-out DSB images and unseen synthetic images score the result. Synthetic fields without any
nucleus are part of both sets: normalised as whole images, their stretched noise is what an
empty plane of a stack looks like to the network.

    python scripts/train_cgm.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_bundled import WEIGHTS, synthetic_pairs  # noqa: E402

from napari_unet import datasets  # noqa: E402

from napari_unet.inference.inputs import fit_normalizer  # noqa: E402
from napari_unet.modelfile import load_model, save_model  # noqa: E402
from napari_unet.models.unet3p import cgm_loss  # noqa: E402
from napari_unet.synthetic import fluorescent_nuclei  # noqa: E402

SIZES = (64, 128, 192, 256, 384, 512)
MIN_PRESENT = 20


def empty_images(n: int, seed: int):
    """Synthetic fields without nuclei (background, shading and noise only): normalised as whole
    images their noise is stretched to the full range, which a CGM must still call empty."""
    return [fluorescent_nuclei((256 + 128 * (i % 3), 384), 0, seed=seed + i)[:2] for i in range(n)]


def at_object_size(pairs, diameter: float) -> list:
    """The pairs resized so that their objects' median diameter is ``diameter`` (as the predictor
    resizes images for a model that declares its object size; images without objects stay)."""
    from napari_unet.scaling import median_diameter, resize_image, resize_labels, scale_for, scaled_shape

    out = []
    for image, labels in pairs:
        size = median_diameter(labels)
        scale = scale_for(diameter, size) if size else 1.0
        if scale == 1.0:
            out.append((image, labels))
            continue
        shape = scaled_shape(np.shape(labels), scale)
        image = np.asarray(image, np.float32)
        grey = image if image.ndim == 2 else image[..., :3].mean(-1)
        out.append((resize_image(grey[None], shape)[0], resize_labels(np.asarray(labels), shape)))
    return out


def crops(pairs, n: int, rng, normalization) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` normalised crops, half with objects and half without (as far as the images allow)."""
    normalized = []
    for image, labels in pairs:
        image = np.asarray(image, np.float32)
        if image.ndim == 3:
            image = image[..., :3].mean(-1)
        normalized.append((fit_normalizer(image[None], normalization)(image[None])[0], labels))
    out, present = [], []
    want = {True: n // 2, False: n - n // 2}
    tries = 0
    while any(want.values()) and tries < 200 * n:
        tries += 1
        image, labels = normalized[rng.integers(len(normalized))]
        size = int(rng.choice([s for s in SIZES if s <= min(image.shape)] or [16 * (min(image.shape) // 16)]))
        y, x = (int(rng.integers(0, d - size + 1)) for d in image.shape)
        fg = int(np.count_nonzero(labels[y:y + size, x:x + size]))
        if 0 < fg < MIN_PRESENT:
            continue
        label = fg >= MIN_PRESENT
        if want[label] == 0:
            continue
        want[label] -= 1
        out.append(image[y:y + size, x:x + size].copy())
        present.append(label)
    return out, np.asarray(present, np.float32)


@torch.no_grad()
def deepest_features(net, images) -> list[torch.Tensor]:
    net.eval()
    return [net.encode(torch.from_numpy(im)[None, None])[-1] for im in images]


def evaluate(cgm, features, labels) -> dict:
    cgm.eval()
    with torch.no_grad():
        p = np.array([float(torch.softmax(cgm(f).flatten(1), 1)[0, 1]) for f in features])
    predicted = p >= 0.5
    pos, neg = p[labels == 1], p[labels == 0]
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    return {"accuracy": float((predicted == (labels == 1)).mean()), "auc": auc,
            "recall_present": float(predicted[labels == 1].mean()), "recall_empty": float((~predicted)[labels == 0].mean()),
            "n_present": int(labels.sum()), "n_empty": int((labels == 0).sum())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder of the data sources (default: $NAPARI_UNET_DATA or ../shared/data)")
    ap.add_argument("--model", type=Path, default=WEIGHTS / "unet3+.safetensors")
    ap.add_argument("--crops", type=int, default=1200, help="training crops (half with objects)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lm = load_model(args.model)
    net = lm.net
    held = lm.config["provenance"]["held_out"]  # a list (nuclei only), or a list per source
    held = held if isinstance(held, dict) else {"nuclei": held}
    train, test = [], []
    for source, names in held.items():  # every real source the model was trained on, its held-out images apart
        spec = datasets.SOURCES[source]
        real = {**datasets.load(spec, "train", args.data_root), **datasets.load(spec, "held_out", args.data_root)}
        train += [real[n] for n in sorted(real) if n not in set(names)]
        test += [real[n] for n in sorted(names)]
    train += synthetic_pairs(40, args.seed) + empty_images(10, 2000)
    test += synthetic_pairs(60, args.seed)[40:] + empty_images(4, 3000)
    if lm.object_diameter:  # the predictor shows the network images whose objects are this size: so do the crops
        train, test = at_object_size(train, lm.object_diameter), at_object_size(test, lm.object_diameter)
    rng = np.random.default_rng(args.seed)
    train_x, train_y = crops(train, args.crops, rng, lm.normalization)
    test_x, test_y = crops(test, args.crops // 3, rng, lm.normalization)
    print(f"crops: {len(train_x)} training ({int(train_y.sum())} with objects), {len(test_x)} test", flush=True)
    train_f, test_f = deepest_features(net, train_x), deepest_features(net, test_x)
    print(f"features: {time.perf_counter() - start:.0f} s", flush=True)
    before = evaluate(net.cgm, test_f, test_y)
    print(f"before: {before}", flush=True)

    torch.manual_seed(args.seed)
    for p in net.parameters():
        p.requires_grad_(False)
    cgm_params = list(net.cgm.parameters())
    for p in cgm_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(cgm_params, lr=args.lr, weight_decay=1e-4)
    targets = torch.from_numpy(train_y)
    for step in range(args.steps):
        net.cgm.train()
        batch = rng.choice(len(train_f), size=32, replace=False)
        prob = torch.cat([torch.softmax(net.cgm(train_f[i]).flatten(1), 1)[:, 1] for i in batch])
        loss = cgm_loss(prob, targets[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {float(loss.detach()):.4f}", flush=True)
    after = evaluate(net.cgm, test_f, test_y)
    trained = evaluate(net.cgm, train_f, train_y)
    print(f"after: test {after}\n       training {trained}", flush=True)

    config = dict(lm.config)
    provenance = dict(config["provenance"])
    provenance["cgm"] = {"trained": dt.date.today().isoformat(), "encoder": "frozen", "crops": len(train_x),
                         "steps": args.steps, "test_accuracy": round(after["accuracy"], 4),
                         "test_auc": round(after["auc"], 4)}
    config["provenance"] = provenance
    save_model(args.model, net, config, half=True)
    card_path = args.model.with_suffix(".md")
    card = card_path.read_text().split("\n## Classification-guided module")[0].rstrip() + f"""

## Classification-guided module

The CGM ("object present" per input tile) was fitted afterwards with `scripts/train_cgm.py`
(encoder and segmentation frozen, so the segmentation above is unchanged; the gate stays off by
default): the paper's binary cross-entropy on {len(train_x)} crops of 64-512 px from the training
images above ({', '.join(held)}{', resized so that objects are %g px across' % lm.object_diameter if lm.object_diameter else ''}) and 10 synthetic fields without objects ({int(train_y.sum())} with >= {MIN_PRESENT} object
pixels, the rest empty), AdamW lr {args.lr},
{args.steps} steps of 32 crops. On {len(test_x)} crops of the held-out images, 20 unseen
synthetic images and 4 unseen empty fields: accuracy {after['accuracy']:.3f}, ROC AUC {after['auc']:.3f} (present recall
{after['recall_present']:.3f}, empty recall {after['recall_empty']:.3f}; before this fit: accuracy
{before['accuracy']:.3f}, AUC {before['auc']:.3f}). Reproduce with
`python scripts/train_cgm.py --crops {args.crops} --steps {args.steps}` (on the model file above).
"""
    card_path.write_text(card)
    print(f"wrote {args.model} and {card_path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
