"""Regenerate the synthetic sample images in this folder.

    python sample_data/generate.py

Writes ``<name>_image.tif`` (uint16) and ``<name>_labels.tif`` (int32) next to this script
for every generator in ``napari_unet.synthetic.SAMPLES``, at its default size and seed 0.
The generators are deterministic, so running this again reproduces the files exactly
(the pixel data; ``tests/core/test_synthetic.py`` checks that they match).
"""

from __future__ import annotations

import sys
from pathlib import Path

import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from napari_unet.synthetic import SAMPLES  # noqa: E402

SEED = 0


def main() -> None:
    for name, generate in SAMPLES.items():
        image, labels = generate(seed=SEED)
        axes = "ZYX" if image.ndim == 3 else "YX"
        for kind, data in (("image", image), ("labels", labels)):
            path = HERE / f"{name}_{kind}.tif"
            tifffile.imwrite(path, data, compression="zlib", metadata={"axes": axes})
            print(f"{path.name}: {data.shape} {data.dtype}, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
