"""What giving the objects' size gains when they are 2x larger or smaller than a model's training data.

The bundled ``unet`` declared (in memory) to work at objects of 30 px, its training data's median
diameter; held-out DSB2018 nuclei images resized by 0.5, 1 and 2 (image and masks), predicted
as they are (scale 1) and with their objects' diameter given (the masks' median, as **Measure on
labels** reads it), scored by AP@0.5 against the resized masks.

    python benchmarks/bench_object_size.py --images 20 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet import datasets  # noqa: E402
from napari_unet.inference.predictor import run_to_end  # noqa: E402
from napari_unet.inference.segment import segment_iter  # noqa: E402
from napari_unet.metrics import evaluate  # noqa: E402
from napari_unet.modelfile import LoadedModel, load_model  # noqa: E402
from napari_unet.scaling import median_diameter, resize_image, resize_labels, scaled_shape  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network-diameter", type=float, default=30.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = datasets.SOURCES["nuclei"]
    if not datasets.available(source):
        print("No DSB2018 images under ../shared/data: nothing to measure.")
        return 2
    held = list(datasets.load(source, "held_out").values())[:args.images]
    base = load_model("unet")
    config = copy.deepcopy(base.config)
    config["input"]["object_diameter"] = args.network_diameter
    model = LoadedModel(base.net, config, base.path, "unet")
    print(f"{len(held)} held-out DSB2018 images, bundled unet declared at {args.network_diameter:g} px, "
          f"{args.threads} thread(s)")
    print("objects resized by | median diameter | as they are: AP@0.5 | size given: AP@0.5")
    for factor in (0.5, 1.0, 2.0):
        plain, given, sizes = [], [], []
        for image, labels in held:
            shape = scaled_shape(labels.shape, factor)
            im = resize_image(np.asarray(image, np.float32), shape) if factor != 1 else image
            lab = resize_labels(labels, shape) if factor != 1 else labels
            d = median_diameter(lab)
            sizes.append(d or 0.0)
            plain.append(evaluate(lab, run_to_end(segment_iter(model, im, device="cpu",
                                                               diameter=args.network_diameter)).labels)["ap50"])
            given.append(evaluate(lab, run_to_end(segment_iter(model, im, device="cpu", diameter=d)).labels)["ap50"])
        print(f"{factor:g}x | {np.median(sizes):.0f} px | {np.mean(plain):.3f} | {np.mean(given):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
