"""Peak memory (RSS) of predicting and labelling a large uint16 image, in a fresh process per size.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 4096 8192]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, "benchmarks")
from _common import benchmark_model
from napari_unet.inference.segment import segment_iter
from napari_unet.inference.predictor import run_to_end
size = int(sys.argv[1])
rng = np.random.default_rng(0)
# a large image of nuclei made by tiling one synthetic 1024^2 field (cheap to build)
from napari_unet.synthetic import fluorescent_nuclei
tile = fluorescent_nuclei(shape=(1024, 1024), n_nuclei=240, seed=1)[0]
reps = -(-size // 1024)
image = np.tile(tile, (reps, reps))[:size, :size].astype(np.uint16)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
seg = run_to_end(segment_iter(benchmark_model("unet"), image, device="cpu"))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": size, "peak_rss_gb": peak / 2**20, "before_gb": base / 2**20,
                  "seconds": seconds, "objects": int(seg.labels.max())}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    args = parser.parse_args()
    print(f"{'image':>12s} {'peak RSS (GB)':>14s} {'image+setup (GB)':>17s} {'seconds':>8s} {'objects':>8s}")
    for size in args.sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(size)], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size:>5d}x{size:<6d} {r['peak_rss_gb']:14.2f} {r['before_gb']:17.2f} {r['seconds']:8.1f} "
              f"{r['objects']:8d}")
    print("target: peak RSS <= 2.5 GB for 8192x8192 uint16")


if __name__ == "__main__":
    main()
