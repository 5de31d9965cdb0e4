"""Block-wise prediction into zarr agrees with a single pass; objects keep one id across seams."""

import threading
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.inference.blockplan import BlockGrid
from napari_unet.inference.large import labels_from_probabilities_iter, segment_to_zarr, segment_to_zarr_iter
from napari_unet.inference.lazyio import open_image, write_zarr
from napari_unet.inference.postprocess import probabilities_to_labels
from napari_unet.inference.predictor import PredictionCancelled, run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.modelfile import make_config, save_model
from napari_unet.synthetic import fluorescent_nuclei

from _helpers import blur_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def blur_model(tmp_path_factory):
    net = blur_net()
    return str(save_model(tmp_path_factory.mktemp("large") / "blur.safetensors", net, make_config(net, "unet")))


@pytest.fixture(scope="module")
def nuclei():
    return fluorescent_nuclei(shape=(600, 700), n_nuclei=120, seed=3)[0]


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    """Same background, and a one-to-one map between the ids of ``a`` and ``b``."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _crossing_seams(labels: np.ndarray, block: int) -> list[int]:
    from scipy import ndimage as ndi

    return [i + 1 for i, box in enumerate(ndi.find_objects(labels))
            if box is not None and any(s.start // block != (s.stop - 1) // block for s in box)]


def test_blocks_equal_a_single_pass(blur_model, nuclei, tmp_path):
    single = run_to_end(segment_iter(blur_model, nuclei, device="cpu", tile_size=256))
    result = segment_to_zarr(blur_model, nuclei, tmp_path / "labels.zarr", tmp_path / "probs.zarr", device="cpu",
                             tile_size=256, block_size=256, label_halo=64)
    assert result.n_blocks == 9
    probs = zarr.open_array(str(tmp_path / "probs.zarr"), mode="r")[...]
    assert probs.shape == nuclei.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, single.prediction.foreground, atol=1e-5)
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[...]
    assert labels.dtype == np.int32 and labels.shape == nuclei.shape
    assert result.n_objects == [int(single.labels.max())] and single.labels.max() > 50
    assert labels.max() == single.labels.max() and len(np.unique(labels)) == labels.max() + 1  # ids 1..N
    assert _same_up_to_relabelling(single.labels, labels)
    crossing = _crossing_seams(single.labels, 256)
    assert len(crossing) >= 5  # the comparison covers objects cut by block seams
    for i in crossing:
        assert len(np.unique(labels[single.labels == i])) == 1


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, bool)
    for cy, cx in centres:
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return out


def _smooth_probabilities(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(mask.astype(np.float32), 1.5)


def test_labels_from_probabilities_agree_across_seams(tmp_path):
    """Post-processing is exact for objects within the label halo; larger ones keep one id."""
    shape = (300, 400)
    rng = np.random.default_rng(0)
    centres = [(int(y), int(x)) for y, x in rng.uniform(10, 290, (50, 2)) * [1, 4 / 3]]
    # pairs of touching discs straddling the seams at 64 px, so the watershed split runs there
    centres += [(64, 60), (64, 76), (128, 190), (143, 190), (10, 128), (26, 128)]
    mask = _discs(shape, centres, 8)
    probs = _smooth_probabilities(mask)
    write_zarr(tmp_path / "p.zarr", probs, chunks=(64, 64))
    counts = run_to_end(labels_from_probabilities_iter(tmp_path / "p.zarr", tmp_path / "l.zarr", block_size=64,
                                                       label_halo=32, min_size=16))
    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...]
    single = probabilities_to_labels(probs[None], min_size=16)
    assert counts == [int(single.max())]
    assert _same_up_to_relabelling(single, labels)
    assert len(_crossing_seams(single, 64)) >= 10

    # a bar longer than the label halo crossing three seams: one object all the same
    bar = np.zeros(shape, bool)
    bar[100:112, 20:300] = True
    write_zarr(tmp_path / "bar.zarr", _smooth_probabilities(bar), chunks=(64, 64))
    run_to_end(labels_from_probabilities_iter(tmp_path / "bar.zarr", tmp_path / "lbar.zarr", block_size=64,
                                              label_halo=16, split_touching=False))
    lbar = zarr.open_array(str(tmp_path / "lbar.zarr"), mode="r")[...]
    assert lbar.max() == 1 and np.array_equal(lbar > 0, probabilities_to_labels(_smooth_probabilities(bar)[None],
                                                                                   split_touching=False) > 0)


def test_boundary_target_and_stacks(tmp_path):
    """Three-class (interior, boundary) probabilities of a 2-plane stack, labelled per plane."""
    shape = (160, 200)
    planes = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        centres = [(int(y), int(x)) for y, x in rng.uniform(12, 150, (14, 2)) * [1, 1.25]]
        interior = _smooth_probabilities(_discs(shape, centres, 6))
        boundary = np.clip(_smooth_probabilities(_discs(shape, centres, 9)) - interior, 0, 1)
        planes.append(np.stack([interior, boundary]))
    probs = np.stack(planes)  # (2, 2, Y, X): planes, classes
    write_zarr(tmp_path / "p.zarr", probs, chunks=(1, 2, 64, 64))
    counts = run_to_end(labels_from_probabilities_iter(tmp_path / "p.zarr", tmp_path / "l.zarr", target="boundary",
                                                       block_size=64, label_halo=32, min_size=8))
    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...]
    assert labels.shape == (2,) + shape
    for p in range(2):
        single = probabilities_to_labels(probs[p], target="boundary", min_size=8)
        assert counts[p] == single.max() > 5
        assert _same_up_to_relabelling(single, labels[p])


def test_stack_and_colour_input_from_a_file(blur_model, tmp_path):
    """A (Z, Y, X) stack from a compressed TIFF, and an RGB image turned grey per window."""
    image = np.stack([fluorescent_nuclei(shape=(200, 260), n_nuclei=20, seed=s)[0] for s in (4, 5)])
    tifffile.imwrite(tmp_path / "stack.tif", image, compression="zlib")
    result = segment_to_zarr(blur_model, tmp_path / "stack.tif", tmp_path / "stack.zarr", device="cpu",
                             block_size=128, label_halo=48)
    single = run_to_end(segment_iter(blur_model, image, device="cpu"))
    labels = result.labels[...]
    assert labels.shape == image.shape and result.n_objects == [int(single.labels[p].max()) for p in range(2)]
    for p in range(2):
        assert _same_up_to_relabelling(single.labels[p], labels[p])

    rgb = np.repeat(image[0][..., None], 3, axis=-1)
    colour = segment_to_zarr(blur_model, rgb, tmp_path / "rgb.zarr", rgb=True, device="cpu", block_size=128)
    assert _same_up_to_relabelling(single.labels[0], colour.labels[...])
    assert any("grey" in w for w in colour.warnings)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_inputs_of_either_format_and_ome_zarr_groups(blur_model, nuclei, tmp_path, zarr_format):
    """zarr v2 and v3 stores, as an array and as an OME-Zarr group (level 0 is read)."""
    image = nuclei[:256, :320]
    single = run_to_end(segment_iter(blur_model, image, device="cpu"))
    array = zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(128, 128),
                              dtype=image.dtype, zarr_format=zarr_format)
    array[...] = image
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=zarr_format)
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]
    group.create_array("0", shape=image.shape, chunks=(128, 128), dtype=image.dtype)[...] = image
    group.create_array("1", shape=(128, 160), chunks=(128, 128), dtype=image.dtype)[...] = image[::2, ::2]
    for source in ("image.zarr", "ome.zarr"):
        assert open_image(tmp_path / source).shape == image.shape
        result = segment_to_zarr(blur_model, tmp_path / source, tmp_path / f"{source}-labels.zarr", device="cpu",
                                 block_size=128, label_halo=48)
        assert _same_up_to_relabelling(single.labels, result.labels[...]), source


def test_memory_mapped_input_is_not_loaded_whole(blur_model, tmp_path, monkeypatch):
    """The numpy memory (traced) of the block pipeline is flat in the image size and smaller than
    the image, while a single pass holds several image-sized arrays. Traced after the intensity
    statistics, whose sample has a fixed bound (``inputs.MAX_STAT_SAMPLES``) at any size."""
    from napari_unet.inference import large
    from napari_unet.inference.distributed import LocalRunner

    tile = fluorescent_nuclei(shape=(192, 192), n_nuclei=10, seed=6)[0]
    segment_to_zarr(blur_model, tile[:64, :64], tmp_path / "warm.zarr", device="cpu")  # imports, untraced
    fit = large.fit_normalizer

    def fit_then_reset(*args, **kwargs):
        normalizer = fit(*args, **kwargs)
        tracemalloc.reset_peak()
        return normalizer

    monkeypatch.setattr(large, "fit_normalizer", fit_then_reset)
    peaks, sources = {}, {}
    for size in (384, 768):
        tifffile.imwrite(tmp_path / f"{size}.tif", np.tile(tile, (size // 192, size // 192)))
        sources[size] = open_image(tmp_path / f"{size}.tif")
        assert isinstance(sources[size], np.memmap)
        tracemalloc.start()
        try:
            result = segment_to_zarr(blur_model, tmp_path / f"{size}.tif", tmp_path / f"{size}.zarr", device="cpu",
                                     block_size=128, label_halo=32, tile_size=256, runner=LocalRunner(1))
            peaks[size] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.n_objects[0] > 6 * (size // 192) ** 2
    tracemalloc.start()
    try:
        run_to_end(segment_iter(blur_model, sources[384], device="cpu", tile_size=256))
        peak_single = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # flat: 4x the pixels, about the same memory (1.28x was seen once: allocations of other threads are traced too)
    assert peaks[768] < 1.5 * peaks[384], peaks
    assert peaks[768] < sources[768].size * 4, peaks  # less than one float32 copy of the image
    assert peak_single > 2 * sources[384].size * 4  # while a single pass holds the image


def test_outputs_are_atomic_and_checked(blur_model, nuclei, tmp_path):
    small = nuclei[:200, :200]
    out = tmp_path / "out.zarr"
    first = segment_to_zarr(blur_model, small, out, device="cpu", block_size=128)
    assert first.labels_path == out and first.probabilities is None
    before = first.labels[...]
    assert before.max() > 3
    assert zarr.open_array(str(out), mode="r").attrs["napari_unet"]["target"] == "binary"
    # a cancelled run leaves the previous output as it was, and no temporary store
    stop = threading.Event()
    gen = segment_to_zarr_iter(blur_model, np.flipud(small), out, device="cpu", block_size=64, stop=stop)
    next(gen)
    next(gen)
    stop.set()
    with pytest.raises(PredictionCancelled):
        run_to_end(gen)
    assert np.array_equal(zarr.open_array(str(out), mode="r")[...], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    # a finished run replaces it
    segment_to_zarr(blur_model, np.flipud(small), out, device="cpu", block_size=128)
    assert not np.array_equal(zarr.open_array(str(out), mode="r")[...], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    # never over something that is not a zarr store, and only to .zarr names
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a zarr store"):
        segment_to_zarr(blur_model, small, tmp_path / "notes.zarr", device="cpu")
    with pytest.raises(ValueError, match=r"\.zarr"):
        segment_to_zarr(blur_model, small, tmp_path / "labels.tif", device="cpu")
    assert (tmp_path / "notes.zarr" / "mine.txt").read_text() == "keep"


def test_outputs_are_checked_before_the_size_estimate(tmp_path, monkeypatch):
    """A refused output fails at once: the objects' size (several model passes) is estimated only
    once the outputs are accepted, and an estimate that fails leaves no temporary folder behind."""
    import tempfile

    from napari_unet.inference import estimate

    net = blur_net()  # declares the objects' size it works at, not the images': sizes are estimated
    model = str(save_model(tmp_path / "sized.safetensors", net, make_config(net, "unet", object_diameter=10)))
    calls = []

    def estimating(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("estimated")
        yield  # a generator, as the real one

    monkeypatch.setattr(estimate, "estimate_diameter_iter", estimating)
    source = write_zarr(tmp_path / "input.zarr", np.zeros((64, 64), np.float32))
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "mine.txt").write_text("keep")
    refused = [(tmp_path / "labels.tif", None, r"\.zarr"),
               (tmp_path / "notes.zarr", None, "not a zarr store"),
               (source, None, "overwrite the input"),
               (tmp_path / "out.zarr", source / "probs.zarr", "overwrite the input"),
               (tmp_path / "same.zarr", tmp_path / "same.zarr", "two different")]
    for labels, probabilities, why in refused:
        with pytest.raises(ValueError, match=why):
            segment_to_zarr(model, str(source), labels, probabilities, device="cpu")
    assert calls == []
    # outputs it accepts: the estimate runs (in-place labels: their temporary folder goes when it fails)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(RuntimeError, match="estimated"):
        segment_to_zarr(model, str(source), None, device="cpu")
    assert len(calls) == 1 and list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "same.zarr").exists()


def test_block_grid_geometry():
    grid = BlockGrid((600, 700), (256, 256))
    assert grid.counts == (3, 3) and grid.n_blocks == 9
    assert grid.core((2, 2)) == (slice(512, 600), slice(512, 700))
    assert grid.neighbour((0, 2), 1, 1) is None and grid.neighbour((0, 2), 0, 1) == (1, 2)
    covered = np.zeros((600, 700), int)
    for index in grid.indices():
        covered[grid.core(index)] += 1
    assert np.all(covered == 1)


def test_in_place_store_for_a_viewer_layer(blur_model, nuclei):
    """Without an output path the store is written in place: a layer can show it while it fills."""
    import dask.array as da

    from napari_unet.inference.large import BlockProgress, needs_blocks

    lazy = da.from_array(nuclei[:300, :300], chunks=100)
    assert needs_blocks(lazy) and not needs_blocks(nuclei) and needs_blocks(np.zeros((1, 9000, 9000), np.uint8))
    gen = segment_to_zarr_iter(blur_model, lazy, device="cpu", block_size=128)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as end:
            result = end.value
            break
    assert all(isinstance(e, BlockProgress) for e in events)
    live = {e.labels_path for e in events}
    assert live == {str(result.labels_path)}
    numbered = [e.region for e in events if e.stage == "number"]
    assert len(numbered) == 9 and (slice(256, 300), slice(256, 300)) in numbered
    single = run_to_end(segment_iter(blur_model, nuclei[:300, :300], device="cpu"))
    assert _same_up_to_relabelling(single.labels, result.labels[...])
    assert sorted(p.name for p in result.labels_path.parent.iterdir()) == ["labels.zarr"]  # no probabilities left


def test_pyramid_levels_equal_the_subsampled_base_whatever_the_regions(tmp_path):
    """Blocks written in any order, not aligned to the levels' steps, give the exact subsampling."""
    import zarr

    from napari_unet.inference.pyramid import Pyramid, level_shapes, needs_pyramid

    assert level_shapes((3000, 5000), min_side=1024) == [(1500, 2500), (750, 1250), (375, 625)]
    assert level_shapes((900, 1000), min_side=1024) == []
    assert needs_pyramid((2, 100, 5000)) and not needs_pyramid((9000, 100, 100))
    full = np.random.default_rng(0).integers(0, 100, (2, 700, 530)).astype(np.int32)
    base = zarr.create(shape=full.shape, chunks=(1, 128, 128), dtype=np.int32, store=str(tmp_path / "b.zarr"))
    pyramid = Pyramid(base, tmp_path / "pyramid", min_side=50)
    regions = [(z, slice(y, y + 170), slice(x, x + 150)) for z in range(2) for y in range(0, 700, 170)
               for x in range(0, 530, 150)]
    for i in np.random.default_rng(1).permutation(len(regions)):
        base[regions[i]] = full[regions[i]]
        pyramid.update(regions[i])
    assert len(pyramid.levels) == 5
    for k, level in enumerate(pyramid.levels):
        assert np.array_equal(level[:], full[:, :: 2 ** k, :: 2 ** k]), k


def test_3d_blocks_equal_a_single_pass(tmp_path):
    """A volume cut into 8 blocks of 16 x 32 x 32 voxels gives the single pass's probabilities and objects."""
    from napari_unet.synthetic import nuclei_3d

    net = blur_net(spatial_dims=3)
    model = str(save_model(tmp_path / "blur3d.safetensors", net, make_config(net, "unet-3d")))
    volume = nuclei_3d(shape=(28, 56, 60), n_nuclei=12, seed=2)[0]
    tiles = dict(device="cpu", tile_size=64, halo=12)  # tiles mirror at the borders, like a block's halo
    single = run_to_end(segment_iter(model, volume, **tiles))
    result = segment_to_zarr(model, volume, tmp_path / "labels.zarr", tmp_path / "probs.zarr",
                             block_size=(16, 32, 32), label_halo=16, **tiles)
    assert result.n_blocks == 8
    probs = zarr.open_array(str(tmp_path / "probs.zarr"), mode="r")[...]
    np.testing.assert_allclose(probs, single.prediction.foreground, atol=1e-5)
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[...]
    assert single.labels.max() > 5 and result.n_objects == [int(single.labels.max())]
    assert _same_up_to_relabelling(single.labels, labels)
    assert _crossing_seams(single.labels, 32)  # some objects are cut by a seam in y or x


def test_a_model_that_resizes_images_is_resized_block_by_block_too(tmp_path):
    """A model that declares objects of 10 px for images whose objects measure 20 sees blocks at
    half size; labels come back at the image's size and agree with a single pass (close, not
    exact: a single pass normalises the resized plane, the blocks the plane itself)."""
    net = blur_net()
    model = str(save_model(tmp_path / "half.safetensors", net,
                           make_config(net, "unet", object_diameter=10, image_object_diameter=20)))
    image = fluorescent_nuclei(shape=(700, 600), n_nuclei=80, seed=5)[0]
    single = run_to_end(segment_iter(model, image, device="cpu", tile_size=128))
    assert single.prediction.scale == 0.5
    result = segment_to_zarr(model, image, tmp_path / "labels.zarr", tmp_path / "probs.zarr", device="cpu",
                             tile_size=128, block_size=256)
    assert result.n_blocks == 9
    probs = zarr.open_array(str(tmp_path / "probs.zarr"), mode="r")[...]
    assert probs.shape == image.shape
    assert np.abs(probs - single.prediction.foreground).max() < 0.2
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert labels.attrs["napari_unet"]["scale"] == 0.5
    labels = labels[...]
    a, b = labels > 0, single.labels > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98
    assert abs(int(labels.max()) - int(single.labels.max())) <= max(2, 0.05 * single.labels.max())
    # sizes count network pixels: the same min_size removes 4x the image pixels at half scale
    n_small = run_to_end(segment_iter(model, image, device="cpu", min_size=150)).labels.max()
    n_native = run_to_end(segment_iter(model, image, device="cpu", min_size=150, diameter=10)).labels.max()
    assert n_small < n_native


def test_blocks_of_a_resized_image_have_no_resampling_seams(tmp_path):
    """Each block's window is resized on the plane's resized grid: at a scale whose grid does not
    line up with the blocks (1/0.7), two block sizes give the same probabilities and labels (each
    block's window resized on its own grid once differed by up to 0.06 near seams)."""
    net = blur_net()
    model = str(save_model(tmp_path / "up.safetensors", net,
                           make_config(net, "unet", object_diameter=10, image_object_diameter=7)))
    image = fluorescent_nuclei(shape=(700, 600), n_nuclei=80, seed=5)[0]
    out = {}
    for block in (256, 384):
        result = segment_to_zarr(model, image, tmp_path / f"l{block}.zarr", tmp_path / f"p{block}.zarr", device="cpu",
                                 tile_size=128, block_size=block)
        assert result.n_blocks > 1
        out[block] = (zarr.open_array(str(tmp_path / f"p{block}.zarr"), mode="r")[...],
                      zarr.open_array(str(tmp_path / f"l{block}.zarr"), mode="r")[...])
    assert zarr.open_array(str(tmp_path / "l256.zarr"), mode="r").attrs["napari_unet"]["scale"] == pytest.approx(10 / 7)
    np.testing.assert_allclose(out[256][0], out[384][0], atol=1e-5)
    assert out[256][1].max() > 5 and _same_up_to_relabelling(out[256][1], out[384][1])
