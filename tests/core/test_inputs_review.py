"""A zarr array is arranged for prediction as numpy and dask arrays are, without reading it whole."""

from __future__ import annotations

import numpy as np
import zarr

from napari_unet.inputs import prepare_image


def test_a_zarr_array_is_arranged_lazily_with_its_channel_axis():
    grey = zarr.zeros((40, 48), dtype=np.uint8, chunks=(20, 24))
    grey[5:10, 5:10] = 7
    prepared = prepare_image(grey)
    assert prepared.data.shape == (1, 40, 48) and type(prepared.data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(prepared.plane(0))[0], grey[:])
    colour = zarr.zeros((40, 48, 3), dtype=np.uint8, chunks=(20, 24, 3))
    colour[..., 0] = 90
    prepared = prepare_image(colour, rgb=True)  # made grey for a one-channel network: the mean of R, G, B
    assert prepared.data.shape == (1, 40, 48) and np.allclose(np.asarray(prepared.plane(0)), 30)
    stack = zarr.zeros((3, 40, 48, 2), dtype=np.float32, chunks=(1, 20, 24, 2))
    prepared = prepare_image(stack, in_channels=2, channel_axis=-1)  # a stack of two-channel planes
    assert prepared.data.shape == (3, 2, 40, 48) and prepared.n_planes == 3
