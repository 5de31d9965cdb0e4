"""The main thread's longest pause while a worker thread imports PyTorch, with and without
loading PyTorch's shared libraries first with the GIL released (``napari_unet.sharedlibs``).

The dock's warm-up imports PyTorch in a worker; what the viewer feels is how long its own thread
waits for Python's GIL meanwhile. Each run is a fresh interpreter (the import happens once per
process); the two ways alternate. The main thread sleeps 1 ms in a loop and records the gaps.

    .venv/bin/python benchmarks/bench_import_stall.py --runs 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
preload = sys.argv[1] == "preload"
done = {}
def job():
    t = time.perf_counter()
    if preload:
        from napari_unet.sharedlibs import preload_torch
        done["preloaded"] = preload_torch()
    import torch  # noqa: F401
    done["seconds"] = time.perf_counter() - t
thread = threading.Thread(target=job)
gaps, last = [], time.perf_counter()
thread.start()
while thread.is_alive():
    time.sleep(0.001)
    now = time.perf_counter()
    gaps.append(now - last)
    last = now
gaps.sort()
print(json.dumps({"longest_ms": gaps[-1] * 1e3, "p99_ms": gaps[int(0.99 * (len(gaps) - 1))] * 1e3,
                  "import_s": done["seconds"], "preloaded": done.get("preloaded", [])}))
"""


def run(way: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs of each way, alternated")
    args = parser.parse_args()
    results = {"import torch": [], "preload, then import torch": []}
    for i in range(args.runs):
        for way, key in (("plain", "import torch"), ("preload", "preload, then import torch")):
            r = run(way)
            results[key].append(r)
            print(f"run {i + 1} {key}: longest pause {r['longest_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                  f"import {r['import_s']:.2f} s", flush=True)
    print("\n| way | longest pause of the main thread (median, range) | p99 | import, s |")
    print("|---|---|---|---|")
    for key, rs in results.items():
        longest = [r["longest_ms"] for r in rs]
        print(f"| {key} | {statistics.median(longest):.0f} ms ({min(longest):.0f}-{max(longest):.0f}) | "
              f"{statistics.median(r['p99_ms'] for r in rs):.0f} ms | "
              f"{statistics.median(r['import_s'] for r in rs):.2f} |")
    plain = statistics.median(r["longest_ms"] for r in results["import torch"])
    pre = statistics.median(r["longest_ms"] for r in results["preload, then import torch"])
    print(f"\nlongest pause, plain / preloaded: {plain / pre:.1f}x")


if __name__ == "__main__":
    main()
