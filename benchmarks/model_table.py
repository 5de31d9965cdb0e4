"""The README's table of the family, measured: parameters, GFLOPs, CPU time, validation AP@0.5.

For every registered architecture (registry defaults): parameters; GFLOPs of one forward pass
at 512x512 (2D) or 64x256x256 (3D) counted by ``torch.utils.flop_counter`` (a multiply-add = 2
FLOPs); CPU milliseconds per forward at that size (eval mode, batch norm folded as the
predictor does, median of ``--repeats`` after a warm-up, ``--threads`` threads); the bundled
weights' validation AP@0.5 from their model card. For U-Net++ also each pruned depth's time
and held-out AP@0.5. Prints the markdown table and, with ``--write``, replaces the block between
``<!-- models-table:start -->`` and ``<!-- models-table:end -->`` in README.md.

    python benchmarks/model_table.py --threads 2 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.catalog import bundled_models  # noqa: E402
from napari_unet.modelfile import read_config  # noqa: E402
from napari_unet.models import available_models, build_model, get_spec  # noqa: E402

START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"
SIZED = ", the objects' size given"


def flops(net, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def cpu_ms(net, x, repeats: int) -> float:
    from napari_unet.inference.predictor import fuse_batchnorm

    net = fuse_batchnorm(net).to(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    with torch.no_grad():
        net(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def bundled_ap(name: str) -> str:
    path = bundled_models().get(name)
    if path is None:
        return "not bundled"
    provenance = read_config(path).get("provenance", {})
    ap = provenance.get("val_ap50")
    where = provenance.get("val_data", "held-out DSB2018" if get_spec(name).spatial_dims == 2 else "")
    return f"{ap:.3f} ({where})" if ap is not None else "bundled"


def rows(threads: int, repeats: int):
    torch.set_num_threads(threads)
    out = []
    for name in available_models():
        spec = get_spec(name)
        torch.manual_seed(0)
        net = build_model(name).eval()
        shape = (1, 1, 512, 512) if spec.spatial_dims == 2 else (1, 1, 64, 256, 256)
        if getattr(net, "margin", 0):
            shape = shape[:2] + net.valid_input_shape(shape[2:])
        x = torch.randn(shape)
        out.append((name, spec, net.n_parameters, flops(net, x), cpu_ms(net, x, repeats), bundled_ap(name),
                    "x".join(map(str, shape[2:]))))
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return out


def pruned_rows(threads: int, repeats: int, data: Path):
    """U-Net++ bundled weights pruned to each depth: CPU ms per 512x512 and held-out DSB AP@0.5
    (images resized to the model's object size from their true masks, when it declares one)."""
    import tifffile

    from napari_unet.inference.predictor import Predictor, run_to_end
    from napari_unet.inference.segment import segment_iter
    from napari_unet.metrics import evaluate, mean_metrics
    from napari_unet.modelfile import load_model
    from napari_unet.scaling import median_diameter

    if "unet++" not in bundled_models():
        return []
    torch.set_num_threads(threads)
    model = load_model("unet++")
    held = model.config["provenance"].get("held_out", [])  # a list (nuclei only) or one per source
    held = held.get("nuclei", []) if isinstance(held, dict) else held
    from napari_unet import datasets

    if datasets.available("nuclei", data.parent):  # never an image the split no longer holds out (trained on)
        held = sorted(set(held) & set(datasets.split(datasets.SOURCES["nuclei"], data.parent)[1]))
    pairs = [(tifffile.imread(folder / "images" / f"{n}.tif"), tifffile.imread(folder / "masks" / f"{n}.tif"))
             for folder in (data, data.parent / "nuclei_dsb2018_more") for n in held
             if (folder / "images" / f"{n}.tif").exists()]
    x = torch.randn(1, 1, 512, 512)
    out = []
    for depth in range(1, model.net.depth + 1):
        model.net.set_prune_depth(depth)
        ms = cpu_ms(model.net, x, repeats)
        predictor = Predictor(model, device="cpu")
        ap = mean_metrics([evaluate(lab, run_to_end(segment_iter(
            model, im, predictor=predictor, diameter=median_diameter(lab) if model.object_diameter else None)).labels)
            for im, lab in pairs])["ap50"] if pairs else float("nan")
        out.append((depth, ms, ap))
    model.net.set_prune_depth(None)
    return out, len(pairs), bool(model.object_diameter)


def table(measured, threads: int) -> str:
    lines = [f"| name | variant | dims | parameters | GFLOPs | CPU ms ({threads} threads) | input | deep supervision | "
             "validation AP@0.5 of the bundled weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, spec, params, gflops, ms, ap, size in measured:
        lines.append(f"| `{name}` | {spec.title} | {spec.spatial_dims}D | {params / 1e6:.2f} M | {gflops:.1f} | "
                     f"{ms:.0f} | {size} | {'yes' if spec.deep_supervision else 'no'} | {ap} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update the table in README.md")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nuclei_dsb2018"))
    args = parser.parse_args(argv)
    text = table(rows(args.threads, args.repeats), args.threads)
    pruned, n_images, sized = pruned_rows(args.threads, args.repeats, Path(args.data)) or ([], 0, False)
    if pruned:
        full = pruned[-1][1]
        text += ("\n\nU-Net++ pruned at depth k (`prune_depth=k`, bundled weights; CPU ms per 512x512 and AP@0.5 "
                 f"on the {n_images} held-out DSB2018 images{SIZED if sized else ''}):\n\n"
                 "| depth k | CPU ms | speed-up | AP@0.5 |\n|---|---|---|---|\n")
        text += "\n".join(f"| {k} | {ms:.0f} | {full / ms:.1f}x | {ap:.3f} |" for k, ms, ap in pruned)
    print(text)
    if args.write:
        readme = ROOT / "README.md"
        content = readme.read_text()
        if START not in content or END not in content:
            raise SystemExit(f"README.md lacks the {START} ... {END} markers.")
        head, rest = content.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print("README.md updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
