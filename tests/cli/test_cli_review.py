"""``napari-unet predict`` with zarr outputs as in a plain batch: one line per failed input, the
others predicted, exit code 2 at the end; zarr arrays inside groups as inputs; every image suffix;
``evaluate`` of zarr predictions."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.cli import main
from napari_unet.modelfile import make_config, save_model
from napari_unet.synthetic import fluorescent_nuclei

from _helpers import blur_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    net = blur_net()
    return str(save_model(tmp_path_factory.mktemp("cli-review") / "blur.safetensors", net, make_config(net, "unet")))


def _image(seed: int, side: int = 96) -> np.ndarray:
    return fluorescent_nuclei(shape=(side, side), n_nuclei=8, seed=seed)[0]


def _errors(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line.startswith("napari-unet:")]


@pytest.mark.parametrize("blocks", [False, True], ids=["one-task-per-file", "blocks"])
def test_zarr_batch_goes_on_past_a_failed_input(model_file, tmp_path, capsys, monkeypatch, blocks):
    from napari_unet.inference import large

    for name, seed in (("a", 1), ("c", 2), ("d", 3)):
        tifffile.imwrite(tmp_path / f"{name}.tif", _image(seed))
    (tmp_path / "b.tif").write_bytes(b"not a tiff at all")
    # d's output cannot be written (an OSError in its task, as a full disk or a lost mount gives)
    real = large.segment_to_zarr_iter

    def failing(model, image, labels_path, *args, **kwargs):
        if str(image).endswith("d.tif"):
            raise PermissionError(13, "Permission denied", str(labels_path))
        return (yield from real(model, image, labels_path, *args, **kwargs))

    monkeypatch.setattr(large, "segment_to_zarr_iter", failing)
    inputs = [str(tmp_path / f"{n}.tif") for n in "abcd"]
    code = main(["predict", model_file, *inputs, "-o", str(tmp_path / "out"), "--format", "zarr", "--device", "cpu",
                 "--block-size", "64" if blocks else "256"])
    captured = capsys.readouterr()
    assert code == 2
    errors = _errors(captured.err)
    assert len(errors) == 3, captured.err
    assert errors[0].startswith("napari-unet: error: b.tif: ")
    assert errors[1] == f"napari-unet: error: d.tif: Permission denied: {tmp_path / 'out' / 'd.zarr'}"
    assert errors[2] == "napari-unet: 2 of 4 inputs failed (b.tif, d.tif); the others were written"
    assert "Traceback" not in captured.err
    for name in "ac":
        assert zarr.open_array(str(tmp_path / "out" / f"{name}.zarr"), mode="r")[...].max() > 0
        assert f"{name}.tif:" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.zarr", "c.zarr"]


def test_zarr_output_over_its_own_group_is_one_line(model_file, tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    group.create_array("raw", shape=(96, 96), dtype=np.uint16, chunks=(48, 48))[...] = _image(5)
    assert main(["predict", model_file, str(tmp_path / "grp.zarr" / "raw"), "-o", str(tmp_path / "grp.zarr"),
                 "--device", "cpu"]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "holds the input" in errors[0], errors
    assert zarr.open_array(str(tmp_path / "grp.zarr" / "raw"), mode="r")[...].max() > 0


def test_the_array_path_the_group_error_suggests_is_accepted(model_file, tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    for name, seed in (("raw", 6), ("other", 7)):
        group.create_array(name, shape=(96, 96), dtype=np.uint16, chunks=(48, 48))[...] = _image(seed)
    assert main(["predict", model_file, str(tmp_path / "grp.zarr"), "-o", str(tmp_path / "out"),
                 "--device", "cpu"]) == 2
    assert f"e.g. {tmp_path / 'grp.zarr' / 'other'}" in capsys.readouterr().err
    for fmt in ("tif", "zarr"):
        assert main(["predict", model_file, str(tmp_path / "grp.zarr" / "raw"), "-o", str(tmp_path / fmt),
                     "--format", fmt, "--device", "cpu"]) == 0
    from_tif = tifffile.imread(tmp_path / "tif" / "raw.tif")
    assert from_tif.max() > 0
    assert np.array_equal(zarr.open_array(str(tmp_path / "zarr" / "raw.zarr"), mode="r")[...] > 0, from_tif > 0)


def test_the_size_estimate_is_reported_with_zarr_outputs(tmp_path, capsys):
    net = blur_net()
    model = str(save_model(tmp_path / "sized.safetensors", net,
                           make_config(net, "unet", object_diameter=10, image_object_diameter=20)))
    tifffile.imwrite(tmp_path / "img.tif", fluorescent_nuclei(shape=(160, 160), n_nuclei=12, seed=8)[0])
    for fmt in ("tif", "zarr"):
        assert main(["predict", model, str(tmp_path / "img.tif"), "-o", str(tmp_path / fmt), "--format", fmt,
                     "--device", "cpu", "--object-size", "auto"]) == 0
        err = capsys.readouterr().err
        assert err.count("img.tif: object size estimated: ") == 1, (fmt, err)


def test_jpeg_and_bmp_inputs_are_inputs_not_models(tmp_path, capsys):
    from skimage.io import imsave

    for name in ("a.jpeg", "b.bmp"):
        imsave(tmp_path / name, (_image(9, 32) // 256).astype(np.uint8), check_contrast=False)
    (tmp_path / "out" / "a.tif").mkdir(parents=True)  # stops the run before any model is loaded
    assert main(["predict", str(tmp_path / "a.jpeg"), str(tmp_path / "b.bmp"), "-o", str(tmp_path / "out")]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "a.tif: a folder has that name" in errors[0], errors


def test_evaluate_reads_zarr_predictions(tmp_path, capsys):
    from napari_unet.inference.lazyio import write_zarr

    truth = np.zeros((40, 40), np.uint16)
    truth[5:15, 5:15], truth[20:35, 22:30] = 1, 2
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "a.tif", truth)
    write_zarr(tmp_path / "pred" / "a.zarr", (truth * 3).astype(np.int32))
    write_zarr(tmp_path / "pred" / "a_probabilities.zarr", (truth > 0).astype(np.float32))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1][0] == "a.tif" and all(float(v) == 1.0 for v in rows[1][1:])
