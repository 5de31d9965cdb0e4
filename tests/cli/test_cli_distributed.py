"""``napari-unet predict --scheduler``: blocks and files on a dask cluster equal a local run."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.cli import main
from napari_unet.modelfile import make_config, save_model
from napari_unet.synthetic import fluorescent_nuclei

from _helpers import blur_net  # noqa: E402

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes with one thread each, on loopback only; fp32 like the tests' own
    process (started before the per-test fixture sets it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_UNET_CPU_PRECISION", "fp32")
        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                      dashboard_address=None) as local:
            yield local


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A 3-level U-Net whose foreground is a thresholded blur of the image (meaningful objects,
    fast, and a receptive field inside the tiles' context)."""
    net = blur_net()
    return str(save_model(tmp_path_factory.mktemp("dist") / "blur.safetensors", net, make_config(net, "unet")))


def _loads(address) -> dict:
    from napari_unet.inference.distributed import model_loads

    with distributed.Client(address) as client:
        return client.run(model_loads)


def test_blocks_on_the_cluster_equal_one_process(cluster, model_file, tmp_path, capsys):
    image = fluorescent_nuclei(shape=(400, 520), n_nuclei=60, seed=7)[0]
    tifffile.imwrite(tmp_path / "big.tif", image)  # uncompressed: memory-mapped
    common = [model_file, str(tmp_path / "big.tif"), "--format", "zarr", "--block-size", "256", "--device", "cpu",
              "--tile-size", "256", "--probabilities", "--threads", "1"]
    assert main(["predict", *common, "-o", str(tmp_path / "local")]) == 0
    assert main(["predict", *common, "-o", str(tmp_path / "cluster"), "--scheduler", cluster.scheduler_address]) == 0
    out = capsys.readouterr().out
    assert "dask cluster" in out and "2 worker(s)" in out
    local = zarr.open_array(str(tmp_path / "local" / "big.zarr"), mode="r")[...]
    remote = zarr.open_array(str(tmp_path / "cluster" / "big.zarr"), mode="r")[...]
    assert local.max() > 25 and np.array_equal(local, remote)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "local" / "big_probabilities.zarr"), mode="r")[...],
                                  zarr.open_array(str(tmp_path / "cluster" / "big_probabilities.zarr"), mode="r")[...])
    # both workers ran blocks, and each loaded the model once
    loads = _loads(cluster.scheduler_address)
    assert sorted(loads.values()) == [1, 1], loads
    assert not [p for p in (tmp_path / "cluster").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_batch_of_files_on_the_cluster(cluster, model_file, tmp_path):
    inputs = []
    for seed in range(4):
        image = fluorescent_nuclei(shape=(160, 200), n_nuclei=12, seed=seed)[0]
        inputs.append(tmp_path / f"img{seed}.tif")
        tifffile.imwrite(inputs[-1], image, compression="zlib")  # compressed: read through tifffile's zarr store
    args = [model_file, *map(str, inputs), "--device", "cpu", "--threads", "1"]
    assert main(["predict", *args, "-o", str(tmp_path / "local")]) == 0
    assert main(["predict", *args, "-o", str(tmp_path / "cluster"), "--scheduler", cluster.scheduler_address]) == 0
    for path in inputs:
        local = tifffile.imread(tmp_path / "local" / f"{path.stem}.tif")
        remote = tifffile.imread(tmp_path / "cluster" / f"{path.stem}.tif")
        assert local.max() > 3 and np.array_equal(local, remote)
    # zarr outputs of the same batch, one task per file
    assert main(["predict", *args, "-o", str(tmp_path / "zarr"), "--format", "zarr",
                 "--scheduler", cluster.scheduler_address]) == 0
    for path in inputs:
        local = tifffile.imread(tmp_path / "local" / f"{path.stem}.tif")
        remote = zarr.open_array(str(tmp_path / "zarr" / f"{path.stem}.zarr"), mode="r")[...]
        assert np.array_equal(local > 0, remote > 0) and local.max() == remote.max()
    assert max(_loads(cluster.scheduler_address).values()) == 1  # the model stayed loaded in each worker


def test_unreachable_scheduler_is_one_line_and_exit_code_2(model_file, tmp_path, capsys, monkeypatch):
    from napari_unet.inference import distributed as dist

    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", 2.0)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    assert main(["predict", model_file, str(tmp_path / "img.tif"), "-o", str(tmp_path / "out"),
                 "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach a dask scheduler at tcp://127.0.0.1:9" in err[0]
    assert not (tmp_path / "out" / "img.tif").exists()


def test_zarr_input_and_output_checks(model_file, tmp_path, capsys):
    from napari_unet.inference.lazyio import write_zarr

    image = fluorescent_nuclei(shape=(150, 170), n_nuclei=10, seed=9)[0]
    write_zarr(tmp_path / "img.zarr", image, chunks=(64, 64))
    assert main(["predict", model_file, str(tmp_path / "img.zarr"), "-o", str(tmp_path / "tif"), "--device", "cpu"]) == 0
    assert main(["predict", model_file, str(tmp_path / "img.zarr"), "-o", str(tmp_path / "out.zarr"),
                 "--device", "cpu", "--block-size", "64"]) == 0
    from_tif = tifffile.imread(tmp_path / "tif" / "img.tif")
    assert from_tif.max() > 3
    assert np.array_equal(from_tif > 0, zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...] > 0)
    capsys.readouterr()
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "notes.txt").write_text("keep")
    img = str(tmp_path / "img.zarr")
    for args, message in [([img, "-o", str(tmp_path / "mine.zarr")], "not a zarr store"),
                          ([img, img, "-o", str(tmp_path / "x.zarr")], "need an output folder"),
                          ([img, "-o", str(tmp_path / "y.zarr"), "--format", "tif"], "names a zarr store")]:
        assert main(["predict", model_file, *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("napari-unet: error:") and message in err[0], err
    assert (tmp_path / "mine.zarr" / "notes.txt").read_text() == "keep"


def test_a_batch_on_the_cluster_goes_on_past_a_failed_file(cluster, model_file, tmp_path, capsys):
    """An unreadable input and an output a worker cannot write (a folder has its name) get one line
    each; the other file is written and the exit code is 2 at the end."""
    tifffile.imwrite(tmp_path / "a.tif", fluorescent_nuclei(shape=(96, 96), n_nuclei=8, seed=1)[0])
    tifffile.imwrite(tmp_path / "c.tif", fluorescent_nuclei(shape=(96, 96), n_nuclei=8, seed=2)[0])
    (tmp_path / "b.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "out" / "c.tif").mkdir(parents=True)
    inputs = [str(tmp_path / f"{n}.tif") for n in "abc"]
    assert main(["predict", model_file, *inputs, "-o", str(tmp_path / "out"), "--device", "cpu", "--threads", "1",
                 "--scheduler", cluster.scheduler_address]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if line.startswith("napari-unet:")]
    assert len(errors) == 3 and "Traceback" not in err, err
    assert errors[0].startswith("napari-unet: error: b.tif: ") and errors[1].startswith("napari-unet: error: c.tif: ")
    assert errors[2] == "napari-unet: 2 of 3 inputs failed (b.tif, c.tif); the others were written"
    assert tifffile.imread(tmp_path / "out" / "a.tif").max() > 0
