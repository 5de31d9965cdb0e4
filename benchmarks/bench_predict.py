"""Tiled prediction against MONAI's sliding_window_inference and an untiled forward pass.

Same network, same weights, same 2048x2048 image, one process. MONAI runs with the settings
of the issue (roi 256, overlap 0.25, gaussian blending); "untiled" is one forward pass of the
whole (reflect-padded) image through the plain network. Masks are compared with Dice against
the untiled forward. Prints times and ratios; nothing here gates a test.

    .venv/bin/python benchmarks/bench_predict.py [--size 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import benchmark_model, best_of, dice, synthetic_image  # noqa: E402

from napari_unet.inference.inputs import fit_normalizer  # noqa: E402
from napari_unet.inference.predictor import Predictor, predict  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(torch.get_num_threads())
    model = benchmark_model("unet")
    net = model.net.eval()
    image = synthetic_image(args.size)
    print(f"model: {model.name}, {net.n_parameters / 1e6:.2f} M parameters; image {image.shape} {image.dtype}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    norm = fit_normalizer(image[None], model.normalization)
    x = torch.from_numpy(norm(image[None]))[None]
    pad = [(-s) % d for s, d in zip(image.shape, net.size_divisor)]
    xp = torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]), mode="reflect")

    def untiled():
        with torch.inference_mode():
            return torch.softmax(net(xp), 1)[0, 1, : image.shape[0], : image.shape[1]].numpy()

    def monai():
        with torch.inference_mode():
            out = sliding_window_inference(x, roi_size=(256, 256), sw_batch_size=1, overlap=0.25, mode="gaussian",
                                           predictor=lambda t: torch.softmax(net(t), 1))
        return out[0, 1].numpy()

    ours_auto = Predictor(model, device="cpu")
    ours_512 = Predictor(model, device="cpu", tile_size=512)
    methods = {
        "untiled forward": untiled,
        "MONAI sliding window (256, 0.25, gaussian)": monai,
        "napari-unet, auto tiles": lambda: predict(model, image, predictor=ours_auto).foreground,
        "napari-unet, tiles 512": lambda: predict(model, image, predictor=ours_512).foreground,
    }
    # Interleaved rounds: this VM's speed drifts, so each round times every method once and
    # ratios are taken within a round (median over rounds).
    times = {name: [] for name in methods}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            seconds, outputs[name] = best_of(fn, 1)
            times[name].append(seconds)
    ref_mask = outputs["untiled forward"] > 0.5

    def ratio(a, b):
        return float(np.median([x / y for x, y in zip(times[a], times[b])]))

    untiled_name, monai_name = "untiled forward", "MONAI sliding window (256, 0.25, gaussian)"
    print(f"\n{'method':45s} {'best s':>7s} {'/untiled':>9s} {'/MONAI':>7s} {'mask Dice':>10s}   (ratios: median "
          f"over {args.repeats} interleaved rounds)")
    for name in methods:
        print(f"{name:45s} {min(times[name]):7.2f} {ratio(name, untiled_name):9.2f} {ratio(name, monai_name):7.2f} "
              f"{dice(outputs[name] > 0.5, ref_mask):10.4f}")
    plan = ours_auto.plan(image.shape)
    print(f"\nauto tiles: window {plan.window}, {plan.n_tiles} tiles, {plan.compute_ratio:.2f} pixels computed per "
          f"image pixel; tiles 512: {ours_512.plan(image.shape).n_tiles} tiles")
    print(f"targets: ours/MONAI <= 0.5 -> {ratio('napari-unet, auto tiles', monai_name):.2f}; "
          f"auto/untiled <= 1.15 -> {ratio('napari-unet, auto tiles', untiled_name):.2f}; "
          f"512/untiled <= 1.3 -> {ratio('napari-unet, tiles 512', untiled_name):.2f}")


if __name__ == "__main__":
    main()
