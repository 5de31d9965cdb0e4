"""Bad input everywhere, command line: every refused input is ONE line on stderr naming the
problem and the fix, exit code 2, no output file written and no input file changed; odd but
usable inputs are segmented with a warning line. ``pytest --collect-only -q`` lists the cases.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main


from _helpers import params as _params  # noqa: E402


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _npy_header(path: Path, shape: tuple, descr: str) -> None:
    """A .npy file with a header and no data (as a cut download leaves it)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("napari-unet: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def cli_models(make_random_model, tmp_path_factory):
    """Model files: a small 1-channel model, a 2-channel one, and damaged / foreign files."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("cli-models")
    good = make_random_model("cli-bad-grey")
    models = {"grey": good, "two-channel": make_random_model("cli-bad-two", in_channels=2),
              "3d": make_random_model("cli-bad-3d", spatial_dims=3, features=(4, 8))}
    models["truncated"] = folder / "truncated.safetensors"
    models["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    models["foreign"] = folder / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(models["foreign"]))
    models["keras"] = folder / "model.keras"
    with zipfile.ZipFile(models["keras"], "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF")
    models["torch-zip"] = folder / "model.pt"
    torch.save({"w": torch.zeros(3)}, models["torch-zip"])
    models["pickle"] = folder / "model.pkl"
    models["pickle"].write_bytes(pickle.dumps({"w": [0.0]}, protocol=4))
    # the weights of a real model file overwritten with NaN
    data = bytearray(good.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start, end = header[name]["data_offsets"]
    data[8 + n + start:8 + n + end] = np.full((end - start) // 4, np.nan, np.float32).tobytes()
    models["nan-weights"] = folder / "nan.safetensors"
    models["nan-weights"].write_bytes(bytes(data))
    return models


def _write_npy(path, array):
    np.save(path, array, allow_pickle=True)


def _png(path, array):
    from skimage.io import imsave

    imsave(path, array, check_contrast=False)


# (id, input file name, writer(path), model key, extra arguments, regex on the error line)
REFUSED_PREDICT = [
    ("image-1d", "signal.npy", lambda p: np.save(p, np.zeros(64)), "grey", [], r"1 dimension.*give a 2D array"),
    ("image-5d", "tczyx.npy", lambda p: np.save(p, np.zeros((1, 2, 3, 16, 16), np.float32)), "grey", [],
     r"5 axes besides channels.*Slice the data"),
    ("image-complex", "fft.npy", lambda p: np.save(p, np.zeros((32, 32), complex)), "grey", [],
     r"complex128.*np\.abs"),
    ("image-pickled-npy", "objects.npy", lambda p: _write_npy(p, np.array([{"a": 1}] * 4, dtype=object)), "grey", [],
     r"cannot read the image"),
    ("image-truncated-npy", "cut.npy", lambda p: (np.save(p, np.zeros((64, 64))), p.write_bytes(p.read_bytes()[:200])),
     "grey", [], r"cannot read the image"),
    ("image-empty-file", "empty.tif", lambda p: p.write_bytes(b""), "grey", [], r"cannot read the image"),
    ("image-npy-header-of-1.8-TiB", "huge.npy", lambda p: _npy_header(p, (10**6, 10**6), "<u2"), "grey", [],
     r"cannot read the image \(the file is shorter than its header says"),
    # an array that does not say what its last axis is: ambiguous (a PNG or an RGB TIFF says it, below)
    ("image-3-values-npy-without-channel-axis", "cells.npy",
     lambda p: np.save(p, np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)), "grey",
     [], r"looks like a colour image.*--channel-axis"),
    ("channel-axis-out-of-range", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "grey",
     ["--channel-axis", "5"], r"Channel axis 5 does not exist.*choose an axis from -2 to 1"),
    ("two-channels-one-channel-model", "two.tif", lambda p: tifffile.imwrite(p, np.zeros((2, 32, 32), np.uint8)),
     "grey", ["--channel-axis", "0"], r"needs 1 input channel\(s\) but the image has 2.*choose a model"),
    ("2d-image-3d-model", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "3d", [],
     r"3D model needs at least 3 axes.*choose a 2D model"),
    ("grey-image-two-channel-model", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)),
     "two-channel", [], r"needs 2 channels but the image has none marked.*--channel-axis"),
    ("model-truncated", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "truncated", [],
     r"truncated\.safetensors.*(truncated|corrupt)"),
    ("model-from-another-tool", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "foreign", [],
     r"another tool"),
    ("model-keras", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "keras", [],
     r"Keras model.*napari-unet model"),
    ("model-torch-save-zip", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "torch-zip", [],
     r"PyTorch checkpoint.*never unpickles"),
    ("model-plain-pickle", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "pickle", [],
     r"Python pickle.*never unpickles"),
    ("model-nan-weights", "img.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), "nan-weights", [],
     r"NaN or infinite.*another model"),
]


@pytest.mark.parametrize("name,write,model,extra,message", _params(REFUSED_PREDICT))
def test_predict_refuses_with_one_line_and_exit_code_2(tmp_path, cli_models, capsys, name, write, model, extra,
                                                       message, one_thread):
    source = tmp_path / "in"
    source.mkdir()
    write(source / name)
    before = _snapshot(source)
    model_before = Path(cli_models[model]).read_bytes()
    out = tmp_path / "out"
    assert main(["predict", str(cli_models[model]), str(source / name), "-o", str(out), *extra]) == 2
    line = _one_error_line(capsys)
    assert re.search(message, line), line
    assert _snapshot(source) == before  # the input is untouched
    assert not out.exists() or not any(out.iterdir())  # nothing written
    assert Path(cli_models[model]).read_bytes() == model_before


# (id, input file name, writer(path), extra arguments, expected labels shape, regex of a warning line or None)
ACCEPTED_PREDICT = [
    ("rgb-png-with-channel-axis", "cells.png",
     lambda p: _png(p, np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8)),
     ["--channel-axis", "-1"], (48, 40), r"warning: The colour image was converted to grey"),
    # one rule for colour: a file that says it is colour is read as colour (as napari and train do)
    ("rgb-png-without-channel-axis", "cells.png",
     lambda p: _png(p, np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8)),
     [], (48, 40), r"warning: The colour image was converted to grey"),
    ("rgb-tiff-without-channel-axis", "cells.tif",
     lambda p: tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8),
                                photometric="rgb"), [], (48, 40), r"warning: The colour image was converted to grey"),
    ("nan-image", "nan.tif", lambda p: tifffile.imwrite(p, np.where(np.eye(40, dtype=bool), np.nan, 1.0)
                                                         .astype(np.float32) + np.arange(40, dtype=np.float32)),
     [], (40, 40), r"warning: The image contains NaN"),
    ("constant-image", "flat.tif", lambda p: tifffile.imwrite(p, np.full((32, 32), 9, np.uint16)), [], (32, 32),
     r"warning: The image is constant"),
    ("1x1-image", "dot.npy", lambda p: np.save(p, np.ones((1, 1), np.float32)), [], (1, 1), r"constant"),
    ("thin-image", "line.npy", lambda p: np.save(p, np.random.default_rng(1).random((2, 300))), [], (2, 300), None),
    ("uint64-huge-values", "huge.npy", lambda p: np.save(p, (np.uint64(2**63) + np.arange(1024, dtype=np.uint64)
                                                             * np.uint64(2**40)).reshape(32, 32)), [], (32, 32), None),
    ("bool-image", "mask.npy", lambda p: np.save(p, np.indices((32, 32)).sum(0) % 3 == 0), [], (32, 32), None),
]


@pytest.mark.parametrize("name,write,extra,shape,warning", _params(ACCEPTED_PREDICT))
def test_predict_segments_odd_images_with_a_warning(tmp_path, cli_models, capsys, name, write, extra, shape, warning,
                                                    one_thread):
    write(tmp_path / name)
    before = (tmp_path / name).read_bytes()
    assert main(["predict", str(cli_models["grey"]), str(tmp_path / name), "-o", str(tmp_path / "out"), *extra]) == 0
    labels = tifffile.imread(tmp_path / "out" / f"{Path(name).stem}.tif")
    assert labels.shape == shape and labels.dtype == np.int32
    err = capsys.readouterr().err
    if warning:
        assert re.search(warning, err), err
    else:  # (the test model is untrained: its "unsure of the pixels" line is right, and not about the input)
        assert not [line for line in err.splitlines() if "warning" in line and "is unsure of" not in line], err
    assert (tmp_path / name).read_bytes() == before


def test_predict_output_name_taken_by_a_folder(tmp_path, cli_models, capsys):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "out" / "img.tif").mkdir(parents=True)
    assert main(["predict", str(cli_models["grey"]), str(tmp_path / "img.tif"), "-o", str(tmp_path / "out")]) == 2
    assert "cannot write" in _one_error_line(capsys)


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_predict_never_writes_over_an_input(tmp_path, cli_models, capsys, fmt):
    """``-o`` the images' own folder: ``img.tif`` would be replaced by its labels; and two inputs
    of the same stem would overwrite each other. Both are refused before any work."""
    tifffile.imwrite(tmp_path / "img.tif", np.full((32, 32), 7, np.uint8))
    np.save(tmp_path / "other.npy", np.zeros((32, 32), np.uint8))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "img.npy", np.zeros((32, 32), np.uint8))
    before = _snapshot(tmp_path)
    model = str(cli_models["grey"])
    fmt_args = ["--format", fmt]
    if fmt == "tif":  # the labels of img.tif are img.tif in its own folder
        assert main(["predict", model, str(tmp_path / "img.tif"), "-o", str(tmp_path), *fmt_args]) == 2
        assert re.search(r"img\.tif would overwrite the input .*img\.tif: choose another -o folder",
                         _one_error_line(capsys))
    else:  # a zarr output named as the input store
        zarr = pytest.importorskip("zarr")
        zarr.open(str(tmp_path / "in.zarr"), mode="w", shape=(32, 32), dtype="uint8")
        before = _snapshot(tmp_path)
        assert main(["predict", model, str(tmp_path / "in.zarr"), "-o", str(tmp_path / "in.zarr")]) == 2
        assert "would overwrite the input" in _one_error_line(capsys)
    out = tmp_path / "out"
    assert main(["predict", model, str(tmp_path / "img.tif"), str(tmp_path / "sub" / "img.npy"), "-o", str(out),
                 *fmt_args]) == 2
    assert re.search(r"img\.tif and .*img\.npy would both be written to .*img\.", _one_error_line(capsys))
    assert not out.exists() or not any(out.iterdir())
    assert _snapshot(tmp_path) == before


# -- evaluate ---------------------------------------------------------------------------------
GT = np.zeros((32, 32), np.int32)
GT[2:10, 2:10], GT[12:20, 12:20] = 1, 2

# (id, writer(gt_dir, pred_dir), regex)
REFUSED_EVALUATE = [
    ("gt-folder-missing", lambda g, p: ((g / "a.tif").unlink(), g.rmdir()), r"gt: no such folder"),
    ("prediction-other-shape", lambda g, p: tifffile.imwrite(p / "a.tif", GT[:16]), r"differs"),
    ("negative-labels", lambda g, p: tifffile.imwrite(p / "a.tif", -GT), r"negative"),
    ("fractional-labels", lambda g, p: tifffile.imwrite(p / "a.tif", GT * 0.5), r"integer instance labels"),
    ("ground-truth-missing", lambda g, p: (g / "a.tif").unlink(), r"gt: no ground truth"),
    ("prediction-missing", lambda g, p: (p / "a.tif").unlink(), r"no prediction with the name of 1 ground-truth"),
]


@pytest.mark.parametrize("breakage,message", _params(REFUSED_EVALUATE))
def test_evaluate_refuses_with_one_line_and_exit_code_2(tmp_path, capsys, breakage, message):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for folder in (gt, pred):
        folder.mkdir()
    tifffile.imwrite(gt / "a.tif", GT)
    tifffile.imwrite(pred / "a.tif", GT)
    breakage(gt, pred)
    before = _snapshot(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert re.search(message, _one_error_line(capsys))
    assert _snapshot(tmp_path) == before


def test_evaluate_uint32_ids_above_2_31(tmp_path, capsys):
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", np.where(GT > 0, GT.astype(np.uint32) + np.uint32(3 << 30), 0)
                         .astype(np.uint32))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["mean", "1.0000"]


# -- train ------------------------------------------------------------------------------------
@pytest.fixture
def train_folders(make_train_folders):
    return make_train_folders(2, 64, 5)


def _train_args(t, model, out):
    return ["train", str(model), "--images", str(t / "images"), "--masks", str(t / "masks"), "-o", str(out),
            "--epochs", "1", "--patch-size", "32", "--batch-size", "2", "--keep-worse"]


REFUSED_TRAIN = [
    ("negative-masks", lambda t: tifffile.imwrite(t / "masks" / "n1.tif", -np.ones((64, 64), np.int32)), "grey",
     lambda t: t / "model", r"negative"),
    ("5d-image", lambda t: tifffile.imwrite(t / "images" / "n1.tif", np.zeros((1, 1, 2, 64, 64), np.uint8)), "grey",
     lambda t: t / "model", r"differs from its image"),
    ("corrupt-image", lambda t: (t / "images" / "n1.tif").write_bytes(b"II*\x00broken"), "grey",
     lambda t: t / "model", r"n1\.tif: cannot read the image"),
    ("base-model-truncated", lambda t: None, "truncated", lambda t: t / "model", r"truncated|corrupt"),
    ("base-model-pickle", lambda t: None, "pickle", lambda t: t / "model", r"pickle.*never unpickles"),
    ("output-under-a-file", lambda t: (t / "a-file").write_text("mine"), "grey",
     lambda t: t / "a-file" / "model", r"cannot write the model"),
    ("output-exists", lambda t: (t / "model.safetensors").write_text("mine"), "grey", lambda t: t / "model",
     r"model\.safetensors already exists: choose another -o, or pass --overwrite"),
    ("rgb-images-one-channel-model",
     lambda t: [tifffile.imwrite(p, np.stack([tifffile.imread(p)] * 3, axis=-1)) for p in (t / "images").iterdir()],
     "grey", lambda t: t / "model", None),
]


@pytest.mark.parametrize("breakage,model,out,message", _params(REFUSED_TRAIN))
def test_train_refuses_with_one_line_and_exit_code_2(train_folders, cli_models, capsys, breakage, model, out,
                                                     message, one_thread):
    t = train_folders
    breakage(t)
    before = _snapshot(t)
    code = main(_train_args(t, cli_models[model], out(t)))
    if message is None:  # a case that must train
        assert code == 0, capsys.readouterr().err
        return
    assert code == 2
    assert re.search(message, _one_error_line(capsys))
    assert _snapshot(t) == before  # no model written, no image or mask changed


def test_a_npy_too_large_for_memory_is_refused_before_it_is_read(tmp_path, cli_models, capsys, one_thread):
    """A real (sparse) 90 GB .npy: mapped, not loaded, and refused with the way to segment it."""
    big = np.lib.format.open_memmap(tmp_path / "slide.npy", mode="w+", dtype=np.uint8, shape=(300_000, 300_000))
    del big
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((32, 32), np.uint8))
    out = tmp_path / "out"
    assert main(["predict", str(cli_models["grey"]), str(tmp_path / "slide.npy"), str(tmp_path / "small.tif"),
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"slide\.npy: The image .* is too large to segment in one piece.*--format zarr", err), err
    assert "1 of 2 inputs failed (slide.npy); the others were written" in err
    assert (out / "small.tif").is_file() and not (out / "slide.tif").exists()  # the batch went on


def test_train_overwrite_replaces_an_existing_model(train_folders, cli_models, capsys, one_thread):
    out = train_folders / "again.safetensors"
    out.write_text("an older model")
    assert main(_train_args(train_folders, cli_models["grey"], out) + ["--overwrite"]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] != b"an older"  # a model file now
