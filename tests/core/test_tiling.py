"""Tiled prediction agrees with an untiled pass; geometry, inputs and lazy arrays."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.inference.predictor import PredictionCancelled, Predictor, predict, predict_iter
from napari_unet.inference.tiling import plan_axis, read_window
from napari_unet.modelfile import load_model


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 3000), window=st.integers(16, 1024), context=st.integers(0, 64),
       blend=st.integers(0, 32), align=st.sampled_from([1, 4, 16]))
def test_blend_weights_are_a_partition_of_unity(length, window, context, blend, align):
    ax = plan_axis(length, window, context, blend, lambda n: -(-n // align) * align, align)
    total = np.zeros(length)
    for i in range(ax.n):
        lo, hi = ax.write_range(i)
        total[lo:hi] += ax.weights(i)
        # the network input covers everything the tile writes
        start = ax.window_start(i)
        assert start <= lo - ax.context and hi + ax.context <= start + ax.window
    assert np.allclose(total, 1.0, atol=1e-6)
    assert ax.core % align == 0


def test_read_window_mirrors_like_global_padding():
    image = np.arange(5 * 7, dtype=np.float32).reshape(1, 5, 7)
    padded = np.pad(image, ((0, 0), (3, 3), (4, 4)), mode="reflect")
    for y0, x0 in [(-3, -4), (-1, 2), (2, 3)]:
        win = read_window(image, (y0, x0), (4, 6))
        assert np.array_equal(win, padded[:, y0 + 3:y0 + 7, x0 + 4:x0 + 10])
    # smaller than the window on every side (repeated reflection), and a 1-pixel image
    assert read_window(image, (-20, -20), (45, 47)).shape == (1, 45, 47)
    assert np.all(read_window(np.ones((1, 1, 1)), (-5, -5), (11, 11)) == 1)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_tiles_match_the_untiled_pass_when_the_halo_covers_the_receptive_field(make_random_model, padding):
    model = load_model(make_random_model(f"rf-{padding}", padding=padding))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(150, 223)).astype(np.float32)
    halo = max(model.net.receptive_radius) + 8 + 1
    untiled = predict(model, image, predictor=Predictor(model, tile_size=4096, halo=halo, blend=8))
    assert untiled.tile_window[0] >= 150  # really one tile
    tiled_pred = Predictor(model, tile_size=halo * 2 + 32, halo=halo, blend=8)
    assert tiled_pred.plan(image.shape).n_tiles > 4
    tiled = predict(model, image, predictor=tiled_pred)
    assert np.abs(tiled.probabilities - untiled.probabilities).max() < 1e-3


def test_default_halo_gives_the_same_masks(tiny_model, nuclei_sample):
    image = nuclei_sample[0]
    untiled = predict(tiny_model, image, tile_size=4096).foreground > 0.5
    tiled = predict(tiny_model, image, tile_size=128).foreground > 0.5
    inter = np.logical_and(untiled, tiled).sum()
    assert 2 * inter / (untiled.sum() + tiled.sum()) >= 0.99


def test_any_size_and_stacks(tiny_model):
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (3, 700), (700, 2), (17, 33)]:
        out = predict(tiny_model, rng.random(shape, dtype=np.float32))
        assert out.probabilities.shape == (1, *shape)
        assert np.isfinite(out.probabilities).all()
    stack = rng.random((3, 40, 50), dtype=np.float32)
    events = []
    gen = predict_iter(tiny_model, stack)
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert result.probabilities.shape == (3, 1, 40, 50)
    assert {e.plane for e in events} == {0, 1, 2} and events[-1].done == events[-1].total
    single = predict(tiny_model, stack[1]).probabilities
    assert np.allclose(result.probabilities[1], single, atol=1e-6)


def test_dask_input_is_read_tile_by_tile(tiny_model):
    rng = np.random.default_rng(2)
    image = rng.random((300, 260), dtype=np.float32)
    fetched = []

    def record(block):
        fetched.append(block.size)
        return block

    lazy = da.from_array(image, chunks=(50, 50)).map_blocks(record, dtype=image.dtype)
    out = predict(tiny_model, lazy, tile_size=96)
    assert np.allclose(out.probabilities, predict(tiny_model, image, tile_size=96).probabilities, atol=1e-6)
    assert max(fetched) <= 50 * 50  # chunks, never the whole image


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.uint16, np.int64, np.float16, np.float64])
def test_every_numeric_dtype(tiny_model, dtype):
    image = (np.random.default_rng(3).random((40, 40)) * 100).astype(dtype)
    assert predict(tiny_model, image).probabilities.dtype == np.float32


def test_messages_for_bad_images(tiny_model):
    with pytest.raises(ValueError, match="at least 2 axes"):
        predict(tiny_model, np.zeros(10))
    with pytest.raises(ValueError, match="Slice the data"):
        predict(tiny_model, np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"has 4 axes besides channels \(shape \(2, 3, 8, 8\)\)"):
        predict(tiny_model, np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="cannot be segmented"):
        predict(tiny_model, np.zeros((8, 8), complex))
    with pytest.raises(ValueError, match="empty"):
        predict(tiny_model, np.zeros((0, 8)))
    with pytest.raises(ValueError, match="needs 1 input channel"):
        predict(tiny_model, np.zeros((2, 8, 8)), channel_axis=0)


def test_colour_nan_and_constant_images_are_handled_and_reported(tiny_model):
    rgb = np.random.default_rng(4).integers(0, 255, (30, 40, 4), dtype=np.uint8)
    out = predict(tiny_model, rgb, rgb=True)
    assert out.probabilities.shape == (1, 30, 40)
    assert any("grey" in w for w in out.warnings) and any("alpha" in w for w in out.warnings)
    nan = np.random.default_rng(5).random((30, 40))
    nan[3:9, 4:20] = np.nan
    nan[0, 0] = np.inf
    out = predict(tiny_model, nan)
    assert np.isfinite(out.probabilities).all() and any("NaN" in w for w in out.warnings)
    out = predict(tiny_model, np.full((30, 40), 7, np.uint16))
    assert any("constant" in w for w in out.warnings)


def test_stop_event_cancels_between_tiles(tiny_model):
    import threading

    stop = threading.Event()
    gen = predict_iter(tiny_model, np.zeros((400, 400), np.float32), tile_size=96, stop=stop)
    next(gen), next(gen)
    stop.set()
    with pytest.raises(PredictionCancelled):
        for _ in gen:
            pass


def test_stop_event_cancels_inside_a_tile(tiny_model):
    """Set while a tile is in the network: the pass stops at the next layer, not after the tile."""
    import threading

    from napari_unet.inference.predictor import Predictor

    stop = threading.Event()
    predictor = Predictor(tiny_model, device="cpu", tile_size=4096)
    calls = []

    def set_stop_in_second_layer(module, inputs):
        calls.append(module)
        if len(calls) == 2:
            stop.set()

    first = next(m for m in predictor.net.modules() if next(m.children(), None) is None)
    later = [m for m in predictor.net.modules() if next(m.children(), None) is None][3]
    handles = [first.register_forward_pre_hook(set_stop_in_second_layer),
               later.register_forward_pre_hook(set_stop_in_second_layer)]
    try:
        with pytest.raises(PredictionCancelled):
            for _ in predict_iter(tiny_model, np.zeros((256, 256), np.float32), predictor=predictor, stop=stop):
                pass
    finally:
        for h in handles:
            h.remove()


def test_tiles_smaller_than_their_halo_are_refused(tiny_model):
    from napari_unet.inference.predictor import Predictor

    with pytest.raises(ValueError, match="leaves no room inside a halo of 32 px.*tile_size >= 80"):
        Predictor(tiny_model, tile_size=64)


def test_out_of_gpu_memory_shrinks_tiles_then_falls_back_to_cpu(tiny_model, monkeypatch):
    """Simulated: a 'cuda' predictor whose forward pass runs out of memory on large tiles."""
    import torch

    from napari_unet.devices import DeviceInfo

    predictor = Predictor(tiny_model, device="cpu", tile_size=512)
    predictor.device = DeviceInfo(torch.device("cpu"), "cuda:0 (simulated)", None)
    monkeypatch.setattr(type(predictor.device), "type", property(lambda self: "cuda" if "simulated" in self.name
                                                                  else self.device.type))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    real_forward = predictor._forward
    calls = []

    def forward(batch):
        calls.append(batch.shape[-1])
        if predictor.device.type == "cuda":
            raise torch.OutOfMemoryError("simulated")
        return real_forward(batch)

    monkeypatch.setattr(predictor, "_forward", forward)
    image = np.random.default_rng(6).random((300, 300), dtype=np.float32)
    out = predict(tiny_model, image, predictor=predictor)
    assert any("retrying with 256 px tiles" in w for w in out.warnings)
    assert any("continuing on the CPU" in w for w in out.warnings)
    assert out.device.startswith("cpu")
    expected = predict(tiny_model, image, device="cpu", tile_size=128)
    assert np.allclose(out.probabilities, expected.probabilities, atol=1e-5)
