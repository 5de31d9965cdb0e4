"""The napari-unet command line, in-process and through the installed entry point."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "unet " in out and "U-Net" in out and "unet-valid" in out


def test_predict_writes_labels_and_probabilities(tmp_path, make_random_model, capsys):
    model = make_random_model("cli-tiny")
    image = SAMPLES / "nuclei_image.tif"
    assert main(["predict", str(model), str(image), "-o", str(tmp_path / "out"), "--probabilities",
                 "--threshold", "0.3"]) == 0
    labels = tifffile.imread(tmp_path / "out" / "nuclei_image.tif")
    probs = tifffile.imread(tmp_path / "out" / "nuclei_image_probabilities.tif")
    assert labels.shape == probs.shape == tifffile.imread(image).shape
    assert labels.dtype == np.int32 and probs.dtype == np.float32
    assert "objects ->" in capsys.readouterr().out
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("make_args,message", [
    (lambda t, m: ["predict", str(m), str(t / "missing.tif"), "-o", str(t)], "input not found"),
    (lambda t, m: ["predict", str(t / "bad.pt"), str(t / "img.tif"), "-o", str(t)], "pickle"),
    (lambda t, m: ["predict", "no-such-model", str(t / "img.tif"), "-o", str(t)], "neither a bundled model"),
    (lambda t, m: ["predict", str(m), str(t / "corrupt.tif"), "-o", str(t)], "cannot read the image"),
    (lambda t, m: ["predict", str(m), str(t / "img4d.tif"), "-o", str(t)], "Slice the data"),
    (lambda t, m: ["predict", str(m), str(t / "img.tif"), "-o", str(t / "img.tif" / "x")], "cannot create"),
    (lambda t, m: ["predict", str(m), str(t / "img.tif"), "-o", str(t), "--device", "tpu"], "Unknown device"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, make_random_model, capsys, make_args, message):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "img4d.tif", np.zeros((2, 2, 32, 32), np.uint8))
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    assert main(make_args(tmp_path, make_random_model("cli-tiny"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-unet: error:") and message in err[0]


def test_entry_point_is_installed():
    exe = Path(sys.executable).with_name("napari-unet")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "predict" in out.stdout
