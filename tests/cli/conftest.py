"""Fixtures shared by the command-line tests."""

import pytest
import tifffile


@pytest.fixture
def make_train_folders(tmp_path):
    """``make(n, size, n_nuclei)``: ``images/`` and ``masks/`` of ``n`` synthetic nuclei images
    (``n<seed>.tif``, ``size`` x ``size``) under ``tmp_path``, as ``napari-unet train`` reads them."""
    from napari_unet.synthetic import fluorescent_nuclei

    def make(n: int, size: int, n_nuclei: int):
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir(exist_ok=True)
        for seed in range(n):
            image, labels = fluorescent_nuclei(shape=(size, size), n_nuclei=n_nuclei, seed=seed)
            tifffile.imwrite(tmp_path / "images" / f"n{seed}.tif", image)
            tifffile.imwrite(tmp_path / "masks" / f"n{seed}.tif", labels)
        return tmp_path

    return make
