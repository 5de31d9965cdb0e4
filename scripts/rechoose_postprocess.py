"""Choose a trained 2D model's stored post-processing again, without training it.

For a model made by ``scripts/train_bundled.py`` (or any binary 2D model that declares its object
size), with the grid that script uses now (threshold, minimum size, and whether and how deep to
split touching objects: ``SPLITS``): the choice is made on the training images that
``train_bundled.py --select-on train`` sets aside (same draw: ``--val-images`` per source, seed
``--seed`` + 1), every held-out image is then scored once with the stored and the new settings,
and the model is written to ``--out`` with the new settings, its provenance (the held-out scores
become its validation numbers, as the model table shows them) and a card section that says all
this. The weights are not changed. The first-click numbers in the bundled cards' section were
measured after that with ``benchmarks/bench_size_estimate.py`` and added to the card.

    python scripts/rechoose_postprocess.py unet --out runs/unet-pp.safetensors --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_bundled import (DEFAULT_PP, load_sources, rescale_pairs, score_postprocess, set_aside,  # noqa: E402
                           tune_postprocess)

from napari_unet import datasets  # noqa: E402
from napari_unet.inference.postprocess import postprocess_text  # noqa: E402
from napari_unet.modelfile import load_model, make_config, save_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a bundled name or a model file")
    ap.add_argument("--out", required=True, help="the model file to write (never the input)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--val-images", type=int, default=12, help="as train_bundled.py's")
    ap.add_argument("--seed", type=int, default=0, help="as train_bundled.py's")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    out = Path(args.out)
    if out.resolve() == Path(model.path).resolve():
        raise SystemExit("--out must be another file: compare the two before replacing the model.")
    if model.target != "binary" or model.spatial_dims != 2 or not model.object_diameter:
        raise SystemExit(f"{args.model}: this script takes binary 2D models that declare their object size.")
    sources = [s for s in ("nuclei", "cells") if datasets.available(datasets.SOURCES[s], args.data_root)]
    data, aside = set_aside(load_sources(sources, args.data_root), args.val_images, args.seed + 1)
    d = model.object_diameter
    choose = {src: rescale_pairs(pairs.values(), d) for src, pairs in aside.items()}
    held = {src: rescale_pairs(h.values(), d) for src, (_, h) in data.items()}
    net = model.net.float().eval()
    table, best = tune_postprocess(net, choose)
    new = best[0]
    old = {**DEFAULT_PP, **model.postprocess}
    for pp, scores, mean in sorted(table, key=lambda r: -r[2])[:8]:
        print(f"  {postprocess_text(pp)}: mean {mean:.3f}  " + "  ".join(f"{s} {m['ap50']:.3f}" for s, m in scores.items()))
    rows = score_postprocess(net, held, [old] + ([new] if new != old else []))
    print(f"chosen on {sum(len(v) for v in aside.values())} set-aside training images: {postprocess_text(new)} "
          f"(stored: {postprocess_text(old)})")
    for label, (pp, scores, mean) in zip(("stored", "new"), rows):
        print(f"held out, {label}: " + ", ".join(f"{s} AP@0.5 {m['ap50']:.3f}" for s, m in scores.items()))
    today = dt.date.today().isoformat()
    set_aside_before = isinstance(model.config.get("provenance", {}).get("chosen_on"), dict)
    trained_on = "were not trained on" if set_aside_before else "were trained on"
    before, after = rows[0][1], rows[-1][1]
    provenance = dict(model.config.get("provenance", {}))
    provenance["postprocess"] = new
    provenance["val_ap50"] = round(sum(m["ap50"] for m in after.values()) / len(after), 4)
    provenance["val_ap50_per_source"] = {s: round(m["ap50"], 4) for s, m in after.items()}
    provenance["val_data"] = ("mean of held-out " + " / ".join(
        f"{s} {m['ap50']:.3f} ({len(held[s])} images)" for s, m in after.items())
        + ", the objects' size given, post-processing chosen on training images")
    provenance["postprocess_rechosen"] = {
        "date": today, "script": "scripts/rechoose_postprocess.py", "previous": old,
        "chosen_on": {src: sorted(names) for src, names in aside.items()},
        "held_out_ap50_before": {s: round(m["ap50"], 4) for s, m in before.items()},
        "held_out_ap50_after": {s: round(m["ap50"], 4) for s, m in after.items()}}
    section = (f"## Post-processing chosen again ({today})\n\n"
               f"`scripts/rechoose_postprocess.py` chose the stored post-processing again, the weights unchanged, "
               f"on {' and '.join(f'{len(v)} {s}' for s, v in aside.items())} training images (the ones "
               f"`train_bundled.py --select-on train` sets aside; these weights {trained_on} them), from a grid "
               f"that now also tries a split depth "
               f"of 2 px and a threshold of 0.7: {postprocess_text(new)} (was {postprocess_text(old)}). Held-out "
               "images at the network's scale, scored once: "
               + ", ".join(f"{s} AP@0.5 {before[s]['ap50']:.3f} -> {after[s]['ap50']:.3f}" for s in before)
               + ". The tables above were measured with the previous settings.\n\n")
    def with_section(text: str) -> str:
        return text.replace("## Limits", section + "## Limits", 1) if "## Limits" in text else text + "\n" + section

    card = with_section(model.config.get("card", ""))
    # the card beside the input may hold more than the one inside it (train_cgm.py adds a section there)
    beside = Path(model.path).with_suffix(".md") if model.path else None
    md = with_section(beside.read_text()) if beside is not None and beside.exists() else card
    config = make_config(net, model.config["architecture"], target="binary", normalization=model.normalization,
                         provenance=provenance, card=card, object_diameter=d)
    config["input"] = {**model.config["input"], **config["input"]}  # what else it declares (size_estimator)
    path = save_model(out, net, config, half=True)
    path.with_suffix(".md").write_text(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
