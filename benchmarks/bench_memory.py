"""Peak memory (RSS) and time of ``napari-unet predict`` on a large uint16 image, one fresh process per case.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 4096 8192] [--kinds nuclei noise]
                                                [--formats tif zarr] [--model unet] [--tmpdir DIR]

Two kinds of image, written to a TIFF by a separate process first:

- ``nuclei``: a mosaic of one synthetic 1024² field of fluorescent nuclei (240 per field);
- ``noise``: Gaussian noise smoothed with sigma 4 px, what a blank slide or a wrong model gives:
  the bundled ``unet`` finds about 2,000 "objects" per megapixel in it (139,000 at 8192²).

Each case then runs the command line (``napari_unet.cli.main``) in a fresh Python process that
reports its own ``ru_maxrss`` and wall time, so each peak is that run's alone. ``tif`` writes
labels to a TIFF from one in-memory pass; ``zarr`` predicts block by block into a zarr store.
Issue 21's target: peak RSS <= 2.5 GB for 8192² noise in both formats, and its time within 2x of
the nuclei mosaic of the same size (the ratio is printed).
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
import tifffile
size, path, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)
if kind == "nuclei":
    from napari_unet.synthetic import fluorescent_nuclei
    tile = fluorescent_nuclei(shape=(1024, 1024), n_nuclei=240, seed=1)[0].astype(np.uint16)
    for y in range(0, size, 1024):
        rows = min(1024, size - y)
        out[y:y + rows] = np.tile(tile[:rows], (1, -(-size // 1024)))[:, :size]
else:
    from scipy import ndimage as ndi
    rng = np.random.default_rng(0)
    for y in range(0, size, 2048):  # strips with a margin, so the smoothing has no seams to speak of
        rows = min(2048, size - y)
        top = max(0, y - 16)
        strip = ndi.gaussian_filter(rng.normal(0, 1, (y + rows + 16 - top, size)).astype(np.float32), 4)
        out[y:y + rows] = np.clip(30000 + strip[y - top:y - top + rows] * 60000, 0, 65535).astype(np.uint16)
out.flush()
"""

CHILD = r"""
import json, resource, sys, time, io, contextlib
from napari_unet.cli import main
argv = sys.argv[1:]
buffer = io.StringIO()
t = time.perf_counter()
with contextlib.redirect_stdout(buffer):
    code = main(argv)
seconds = time.perf_counter() - t
text = buffer.getvalue()
print(text, file=sys.stderr)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "peak_rss_gb": peak / 2**20, "seconds": seconds, "output": text.strip()[-300:]}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--kinds", nargs="+", default=["nuclei", "noise"], choices=["nuclei", "noise"])
    parser.add_argument("--formats", nargs="+", default=["tif", "zarr"], choices=["tif", "zarr"])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--tmpdir", default=None, help="where the images and outputs go (deleted at the end)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.tmpdir))
    rows = []
    try:
        for size in args.sizes:
            for kind in args.kinds:
                image = tmp / f"{kind}{size}.tif"
                subprocess.run([sys.executable, "-c", MAKE, str(size), str(image), kind], check=True)
                for fmt in args.formats:
                    out = tmp / f"out_{kind}{size}_{fmt}"
                    target = str(out) + (".zarr" if fmt == "zarr" else "")
                    run = subprocess.run([sys.executable, "-c", CHILD, "predict", args.model, str(image), "-o", target,
                                          "--format", fmt], capture_output=True, text=True)
                    if run.returncode:
                        print(f"{kind} {size} {fmt} failed:\n{run.stderr[-2000:]}")
                        continue
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                    objects = r["output"].rsplit(" objects", 1)[0].rsplit(" ", 1)[-1]
                    rows.append((size, kind, fmt, r["peak_rss_gb"], r["seconds"], objects))
                    print(f"{size:>5d}² {kind:<7s} {fmt:<5s} peak RSS {r['peak_rss_gb']:.2f} GB  {r['seconds']:7.1f} s  "
                          f"objects {objects}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(target, ignore_errors=True)
                image.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'image':>7s} {'format':>6s} {'nuclei GB':>9s} {'noise GB':>8s} {'nuclei s':>8s} {'noise s':>8s} "
          f"{'time ratio':>10s}")
    for size in args.sizes:
        for fmt in args.formats:
            got = {kind: (gb, s, n) for sz, kind, f, gb, s, n in rows if sz == size and f == fmt}
            if "nuclei" in got and "noise" in got:
                print(f"{size:>6d}² {fmt:>6s} {got['nuclei'][0]:9.2f} {got['noise'][0]:8.2f} {got['nuclei'][1]:8.1f} "
                      f"{got['noise'][1]:8.1f} {got['noise'][1] / got['nuclei'][1]:9.2f}x")
    print("targets: noise peak RSS <= 2.5 GB at 8192², noise time <= 2x nuclei time")


if __name__ == "__main__":
    main()
