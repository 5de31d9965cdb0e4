"""Peak RSS of block-wise prediction into zarr from a memory-mapped TIFF (or zarr), per image size.

    .venv/bin/python benchmarks/bench_memory_large.py [--sizes 4096 8192 20000] [--model mobile-unet]
                                                       [--input tif|zarr] [--block-size 2048] [--tmpdir DIR]

Each size runs in a fresh process (so peak RSS is that run's alone): the input, a uint16 image of
synthetic nuclei, is first written to disk by another process, then ``segment_to_zarr`` predicts
and labels it block by block into a zarr store. Peak RSS counts the pages of the memory-mapped
input that stay resident, so it is the honest number for "memory flat in image size".
Disk: about 2 bytes per pixel for the input plus the zarr stores (20000²: ~0.8 GB + ~1 GB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MAKE = r"""
import sys
import numpy as np
from napari_unet.synthetic import fluorescent_nuclei
size, path, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tile = fluorescent_nuclei(shape=(1024, 1024), n_nuclei=240, seed=1)[0].astype(np.uint16)
if kind == "tif":
    import tifffile
    out = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)  # uncompressed, contiguous
else:
    import zarr
    out = zarr.create(shape=(size, size), chunks=(1024, 1024), dtype=np.uint16, store=path, overwrite=True)
for y in range(0, size, 1024):
    rows = min(1024, size - y)
    out[y:y + rows] = np.tile(tile[:rows], (1, -(-size // 1024)))[:, :size]
if kind == "tif":
    out.flush()
"""

CHILD = r"""
import json, resource, sys, time
import torch
from napari_unet.inference.large import segment_to_zarr
from napari_unet.inference.predictor import Predictor
path, out, model, block, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
predictor = Predictor(model, device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
result = segment_to_zarr(predictor.model, path, out, predictor=predictor, block_size=block)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_gb": peak / 2**20, "before_gb": base / 2**20, "seconds": seconds,
                  "objects": result.n_objects[0], "blocks": result.n_blocks, "shape": list(result.labels.shape)}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 20000])
    parser.add_argument("--model", default="mobile-unet", help="bundled model name or model file (default: the "
                                                                "fast mobile-unet)")
    parser.add_argument("--input", choices=("tif", "zarr"), default="tif",
                        help="memory-mapped uncompressed TIFF (default) or a chunked zarr store")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--tmpdir", default=None, help="where the input and outputs go (default: the system's)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-large-", dir=args.tmpdir))
    rows = []
    try:
        print(f"model {args.model}, blocks {args.block_size}², input {args.input}, files under {root}")
        print(f"{'image':>13s} {'peak RSS (GB)':>14s} {'after load (GB)':>16s} {'seconds':>8s} {'µs/px':>6s} "
              f"{'blocks':>6s} {'objects':>8s}")
        for size in args.sizes:
            src = root / f"image{size}.{'tif' if args.input == 'tif' else 'zarr'}"
            made = subprocess.run([sys.executable, "-c", MAKE, str(size), str(src), args.input],
                                  capture_output=True, text=True)
            if made.returncode:
                print(made.stderr[-2000:])
                continue
            out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(root / f"labels{size}.zarr"), args.model,
                                  str(args.block_size), str(args.threads)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:])
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((size, r))
            print(f"{size:>6d}x{size:<6d} {r['peak_rss_gb']:14.2f} {r['before_gb']:16.2f} {r['seconds']:8.1f} "
                  f"{1e6 * r['seconds'] / size ** 2:6.2f} {r['blocks']:6d} {r['objects']:8d}", flush=True)
            shutil.rmtree(src, ignore_errors=True) if src.is_dir() else src.unlink()
            shutil.rmtree(root / f"labels{size}.zarr", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = all(r["peak_rss_gb"] <= 2.5 for _, r in rows)
    print(f"target: peak RSS <= 2.5 GB at every size: {'met' if ok and rows else 'NOT met'}")


if __name__ == "__main__":
    main()
