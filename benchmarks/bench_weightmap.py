"""The U-Net weight map against the naive one-full-image-EDT-per-object implementation.

Same labels, same process: ``napari_unet.synthetic.fluorescent_nuclei`` 1024x1024 with 100
nuclei (and a 3D anisotropic stack from ``nuclei_3d`` with ``spacing=(2, 1, 1)``). The naive
reference runs ``scipy.ndimage.distance_transform_edt`` on the whole image once per object and
keeps the two smallest distances; it is the exact answer, so the largest difference is printed
too (bounded by the 1e-3 tolerance of the cut-off). Prints times and ratios; gates nothing.

    .venv/bin/python benchmarks/bench_weightmap.py [--size 1024] [--objects 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of  # noqa: E402

from napari_unet.synthetic import fluorescent_nuclei, nuclei_3d  # noqa: E402
from napari_unet.training.weightmap import separation_cutoff, weight_map  # noqa: E402


def naive_weight_map(labels, w0=10.0, sigma=5.0, spacing=None):
    """Eq. 2 with one full-image distance transform per object (balanced classes, background term)."""
    best1 = np.full(labels.shape, np.inf)
    best2 = np.full(labels.shape, np.inf)
    for i in np.unique(labels):
        if i == 0:
            continue
        d = ndi.distance_transform_edt(labels != i, sampling=spacing)
        best2 = np.where(d < best1, best1, np.minimum(best2, d))
        best1 = np.minimum(best1, d)
    n_fg = np.count_nonzero(labels)
    n_bg = labels.size - n_fg
    n_max = max(n_bg, n_fg)
    w = np.where(labels == 0, n_max / n_bg, n_max / n_fg)
    near = (labels == 0) & np.isfinite(best2)
    w[near] += w0 * np.exp(-((best1[near] + best2[near]) ** 2) / (2 * sigma**2))
    return w.astype(np.float32)


def compare(name, labels, spacing, repeats):
    fast_s, fast = best_of(lambda: weight_map(labels, spacing=spacing), repeats)
    naive_s, naive = best_of(lambda: naive_weight_map(labels, spacing=spacing), max(1, repeats // 2))
    mpix = labels.size / 1e6
    print(f"{name}: {labels.shape}, {int(labels.max())} objects, spacing {spacing}")
    print(f"  weight_map                  {fast_s * 1e3:9.1f} ms   {fast_s * 1e3 / mpix:8.1f} ms/Mpixel")
    print(f"  naive (per-object full EDT) {naive_s * 1e3:9.1f} ms   {naive_s * 1e3 / mpix:8.1f} ms/Mpixel")
    print(f"  naive / weight_map = {naive_s / fast_s:.1f}x;  max |difference| = {np.abs(fast - naive).max():.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"defaults w0 = 10, sigma = 5 px: cut-off d1 + d2 <= {separation_cutoff(10.0, 5.0):.1f} px "
          f"(separation term < 1e-3 beyond)")
    labels = fluorescent_nuclei(shape=(args.size, args.size), n_nuclei=args.objects, seed=0)[1]
    compare("2D fluorescent_nuclei", labels, None, args.repeats)
    labels3d = nuclei_3d(shape=(32, 128, 128), n_nuclei=30, seed=0)[1]
    compare("3D nuclei_3d", labels3d, (2.0, 1.0, 1.0), args.repeats)
    print("target: weight_map well under 1 s for 1024x1024 with 100 objects")


if __name__ == "__main__":
    main()
