"""Image files as microscopists have them: pyramidal OME-TIFF, planar RGB TIFF, OME-Zarr 0.5,
opened lazily (zarr outputs, a cluster) and read whole (TIFF outputs, train) alike."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.inputs.files import marks_rgb, open_image_file, read_image

zarr = pytest.importorskip("zarr")


def test_a_pyramidal_ome_tiff_opens_at_full_resolution(tmp_path):
    image = np.random.default_rng(0).integers(0, 4000, (256, 320), dtype=np.uint16)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tif:  # as QuPath or bfconvert write them: tiled, compressed, sub-resolutions
        tif.write(image, tile=(64, 64), compression="zlib", subifds=1)
        tif.write(image[::2, ::2], tile=(64, 64), compression="zlib", subfiletype=1)
    opened = open_image_file(path)
    assert tuple(opened.shape) == image.shape
    np.testing.assert_array_equal(np.asarray(opened[:]), image)
    np.testing.assert_array_equal(read_image(path), image)


def test_a_planar_rgb_tiff_is_colour_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert marks_rgb(path)
    np.testing.assert_array_equal(read_image(path), rgb)
    np.testing.assert_array_equal(np.asarray(open_image_file(path)), rgb)


def test_an_ome_zarr_05_multiscale_opens_its_first_level(tmp_path):
    image = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    root = zarr.open_group(str(tmp_path / "image.zarr"), mode="w")
    root.create_array("0", shape=image.shape, dtype=image.dtype)[:] = image
    root.create_array("1", shape=(32, 24), dtype=image.dtype)[:] = image[::2, ::2]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}, {"path": "1"}]}]}
    np.testing.assert_array_equal(np.asarray(open_image_file(tmp_path / "image.zarr")[:]), image)


def test_an_rgb_file_is_colour_with_a_zarr_output_too(tmp_path, make_random_model, capsys):
    """A colour TIFF segments with TIFF and with zarr outputs alike (the zarr path did not look
    at the file's colour record and refused it as 'looks like a colour image')."""
    from napari_unet.cli import main

    rgb = np.random.default_rng(2).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", rgb, photometric="rgb")
    model = str(make_random_model("files-grey"))
    assert main(["predict", model, str(tmp_path / "cells.tif"), "-o", str(tmp_path / "tif")]) == 0
    assert main(["predict", model, str(tmp_path / "cells.tif"), "-o", str(tmp_path / "out.zarr")]) == 0, \
        capsys.readouterr().err
    assert tuple(zarr.open(str(tmp_path / "out.zarr"), mode="r").shape) == (48, 56)
