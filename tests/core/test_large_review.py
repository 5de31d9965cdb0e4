"""Block-wise runs never write over their input; re-labelling follows what the store recorded;
workers load the model file as it is now, by its absolute path."""

import os
import tempfile

import numpy as np
import pytest
import zarr

from napari_unet.inference.blockstores import BlockStores
from napari_unet.inference.large import labels_from_probabilities_iter, segment_to_zarr
from napari_unet.inference.lazyio import write_zarr
from napari_unet.inference.postprocess import probabilities_to_labels
from napari_unet.inference.predictor import run_to_end
from napari_unet.inputs import is_image_input
from napari_unet.modelfile import make_config, save_model
from napari_unet.synthetic import fluorescent_nuclei

from _helpers import blur_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory):
    net = blur_net()
    return str(save_model(tmp_path_factory.mktemp("review") / "blur.safetensors", net, make_config(net, "unet")))


@pytest.fixture(scope="module")
def image():
    return fluorescent_nuclei(shape=(96, 96), n_nuclei=8, seed=4)[0]


def test_an_output_over_the_input_is_refused_and_the_input_kept(blur_model, image, tmp_path):
    img = tmp_path / "img.zarr"
    write_zarr(img, image, chunks=(48, 48))
    (tmp_path / "link.zarr").symlink_to(img)
    group = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    group.create_array("raw", shape=image.shape, dtype=image.dtype, chunks=(48, 48))[...] = image
    cases = [(img, img, None), (img, tmp_path / "link.zarr", None), (img, img / "labels.zarr", None),
             (img, tmp_path / "out.zarr", img),  # the probabilities over the input
             (tmp_path / "link.zarr", img, None), (tmp_path / "grp.zarr" / "raw", tmp_path / "grp.zarr", None),
             (zarr.open_array(str(img), mode="r"), img, None)]  # an array read from that store
    for source, labels, probs in cases:
        with pytest.raises(ValueError, match="input") as info:
            segment_to_zarr(blur_model, source, labels, probs, device="cpu", block_size=64)
        assert "\n" not in str(info.value)
    np.testing.assert_array_equal(zarr.open_array(str(img), mode="r")[...], image)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "grp.zarr" / "raw"), mode="r")[...], image)
    assert not (tmp_path / "out.zarr").exists()
    # beside the input is fine
    result = segment_to_zarr(blur_model, img, tmp_path / "labels.zarr", device="cpu", block_size=64)
    assert result.labels[...].max() > 0


def test_relabelling_over_the_probabilities_is_refused(tmp_path):
    probs = np.zeros((64, 64), np.float32)
    probs[10:30, 10:30] = 0.9
    write_zarr(tmp_path / "p.zarr", probs)
    for out in (tmp_path / "p.zarr", tmp_path / "p.zarr" / "l.zarr"):
        with pytest.raises(ValueError, match="input"):
            run_to_end(labels_from_probabilities_iter(tmp_path / "p.zarr", out))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"), mode="r")[...], probs)


def test_relabelling_defaults_to_the_recorded_halo_and_dimensions(tmp_path):
    """A volume's store (block of 3 axes, a label halo grown for a resizing model) is re-labelled
    in 3D with that halo: objects spanning planes keep one id."""
    probs = np.zeros((12, 40, 40), np.float32)
    zz, yy, xx = np.mgrid[:12, :40, :40]
    for cz, cy, cx in [(6, 12, 12), (5, 28, 26)]:
        probs[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 0.95
    recorded = {"target": "binary", "block_size": [16, 32, 32], "label_halo": 40, "scale": 1.0}
    write_zarr(tmp_path / "p.zarr", probs, chunks=(6, 20, 20), attrs={"napari_unet": recorded})
    counts = run_to_end(labels_from_probabilities_iter(tmp_path / "p.zarr", tmp_path / "l.zarr", min_size=8,
                                                       split_touching=False))
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")
    assert out.attrs["napari_unet"]["label_halo"] == 40
    single = probabilities_to_labels(probs[None], min_size=8, split_touching=False)
    assert counts == [int(single.max())] == [2]
    assert len(np.unique(out[...])) == 3


def test_a_refused_probabilities_path_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"\.zarr"):
        BlockStores.prepare(None, tmp_path / "probabilities.tif")
    assert list(tmp_path.iterdir()) == []


def test_a_zarr_array_folder_is_an_input_whatever_its_name(tmp_path):
    group = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    group.create_array("raw", shape=(8, 8), dtype=np.uint8)
    sub = zarr.open_group(str(tmp_path / "plain"), mode="w", zarr_format=2)
    sub.create_array("a", shape=(8, 8), dtype=np.uint8)
    (tmp_path / "folder").mkdir()
    assert is_image_input(tmp_path / "grp.zarr" / "raw") and is_image_input(tmp_path / "plain" / "a")
    assert not is_image_input(tmp_path / "folder") and not is_image_input(tmp_path / "missing")


def test_a_scheduler_file_under_home_is_found(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from napari_unet.inference.runners import DaskRunner

    (tmp_path / "dask.json").write_text("{}")
    monkeypatch.setenv("HOME", str(tmp_path))
    seen = {}

    class Client:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs, args=args)

    monkeypatch.setattr(distributed, "Client", Client)
    DaskRunner.connect("~/dask.json", timeout=1)
    assert seen["scheduler_file"] == str(tmp_path / "dask.json")


def _rewrite(path, scale: float) -> None:
    """The model saved again at ``path`` (atomically: a new file renamed over it), other weights."""
    import torch

    net = blur_net()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    save_model(path, net, make_config(net, "unet"))


def test_a_worker_reloads_a_model_file_saved_again(tmp_path):
    from napari_unet.inference.runners import cached_predictor, model_loads

    path = tmp_path / "m.safetensors"
    _rewrite(path, 1.0)
    settings = {"device": "cpu", "tile_size": 128}
    first = cached_predictor(str(path), settings)
    assert cached_predictor(str(path), settings) is first
    loads = model_loads()
    stat = os.stat(path)
    _rewrite(path, 0.5)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old time: a new inode
    second = cached_predictor(str(path), settings)
    assert second is not first and model_loads() == loads + 1
    a, b = (next(iter(p.model.net.parameters())).detach() for p in (first, second))
    assert not np.allclose(a.numpy(), b.numpy())


def test_workers_get_the_model_file_by_its_absolute_path(blur_model, image, tmp_path, monkeypatch):
    import tifffile

    from napari_unet.inference.distributed import FileJob, FileResult, segment_files_iter
    from napari_unet.inference.runners import LocalRunner

    class Remote(LocalRunner):  # runs here, but as a cluster would: tasks get the model's reference
        local = False
        sent = []

        def map(self, fn, arglist, stop=None):
            self.sent.extend(args[1] for args in arglist)
            return super().map(fn, arglist, stop)

    tifffile.imwrite(tmp_path / "img.tif", image)
    monkeypatch.chdir(os.path.dirname(blur_model))
    job = FileJob(str(tmp_path / "img.tif"), str(tmp_path / "img_labels.tif"))
    events = list(segment_files_iter("blur.safetensors", [job], Remote(1), {}, {"device": "cpu"}))
    assert [type(e) for e in events if not hasattr(e, "done")] == [FileResult]
    assert Remote.sent == [str(blur_model)]
