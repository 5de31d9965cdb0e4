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
    (lambda t, m: ["predict", str(m), str(t / "missing.tif"), "-o", str(t / "out")], "input not found"),
    (lambda t, m: ["predict", str(t / "bad.pt"), str(t / "img.tif"), "-o", str(t / "out")], "pickle"),
    (lambda t, m: ["predict", "no-such-model", str(t / "img.tif"), "-o", str(t / "out")], "neither a bundled model"),
    (lambda t, m: ["predict", str(m), str(t / "corrupt.tif"), "-o", str(t / "out")], "cannot read the image"),
    (lambda t, m: ["predict", str(m), str(t / "img4d.tif"), "-o", str(t / "out")], "Slice the data"),
    (lambda t, m: ["predict", str(m), str(t / "img.tif"), "-o", str(t / "img.tif" / "x")], "cannot create"),
    (lambda t, m: ["predict", str(m), str(t / "img.tif"), "-o", str(t / "out"), "--device", "tpu"], "Unknown device"),
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


@pytest.fixture
def train_folders(make_train_folders):
    return make_train_folders(3, 96, 8)


def test_train_then_predict_then_evaluate(train_folders, make_random_model, capsys):
    t = train_folders
    base = make_random_model("cli-base")
    assert main(["train", str(base), "--images", str(t / "images"), "--masks", str(t / "masks"), "-o",
                 str(t / "tuned"), "--epochs", "1", "--patch-size", "64", "--batch-size", "2",
                 "--keep-worse"]) == 0  # (one epoch from random weights: the keep rule is tested elsewhere)
    from napari_unet.modelfile import load_model

    tuned = load_model(t / "tuned.safetensors")
    # one epoch of the shared default (FinetuneSettings.steps_per_epoch) steps, the default border-term weight map
    assert tuned.config["provenance"]["steps"] == 20 and tuned.config["provenance"]["weight_map"]["w0"] == 10.0
    assert main(["predict", str(t / "tuned.safetensors"), *map(str, sorted((t / "images").iterdir())),
                 "-o", str(t / "pred")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(t / "masks"), "--gt", str(t / "masks")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split()[:2] == ["mean", "1.0000"]  # a perfect prediction scores AP 1
    assert main(["evaluate", "--pred", str(t / "pred"), "--gt", str(t / "masks")]) == 0


def test_train_on_a_training_set_folder_of_the_correct_widget(train_folders, make_random_model, capsys):
    from napari_unet.modelfile import load_model
    from napari_unet.trainingset import TrainingSet

    t = train_folders
    ts = TrainingSet(t / "corrections")
    for path in sorted((t / "images").iterdir()):
        reviewed = np.zeros((96, 96), bool)
        reviewed[:, :64] = True  # half reviewed: the rest is ignored by the loss
        ts.add(tifffile.imread(path), tifffile.imread(t / "masks" / path.name), reviewed, name=path.stem)
    ts.update("n0", labels=tifffile.imread(t / "masks" / "n0.tif"))  # an autosaved revision
    # (--keep-worse: one epoch from random weights is not judged here, the training-set folder is)
    assert main(["train", str(make_random_model("cli-base")), "--training-set", str(t / "corrections"), "-o",
                 str(t / "tuned"), "--epochs", "1", "--patch-size", "64", "--batch-size", "2", "--keep-worse"]) == 0
    provenance = load_model(t / "tuned.safetensors").config["provenance"]
    assert provenance["data"] == str((t / "corrections").resolve()) and provenance["train_images"] == 2
    assert provenance["val_regions"] == 1  # 3 images of 96 px, too small for a strip: one is held out whole
    for args, message in ([], "--training-set DIR"),  \
            (["--training-set", str(t / "corrections"), "--images", str(t / "images")], "not both"), \
            (["--training-set", str(t / "images")], "not a training set"), \
            (["--training-set", str(t / "none")], "not a training set"):
        capsys.readouterr()
        assert main(["train", "unet", *args, "-o", str(t / "bad"), "--epochs", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    TrainingSet(t / "empty")
    assert main(["train", "unet", "--training-set", str(t / "empty"), "-o", str(t / "bad"), "--epochs", "1"]) == 2
    assert "is empty" in capsys.readouterr().err and not (t / "bad.safetensors").exists()


def test_train_resume_continues_where_the_last_epoch_ended(train_folders, make_random_model, capsys):
    from napari_unet.modelfile import load_model

    t = train_folders
    args = ["train", str(make_random_model("cli-base")), "--images", str(t / "images"), "--masks", str(t / "masks"),
            "-o", str(t / "tuned"), "--patch-size", "64", "--batch-size", "2"]
    assert main([*args, "--epochs", "2", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main([*args, "--epochs", "1"]) == 0
    assert (t / "tuned.safetensors.resume").is_file()
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from tuned.safetensors.resume" in out
    assert "step 40:" in out and "step 20:" not in out  # only the second epoch ran
    assert load_model(t / "tuned.safetensors").config["provenance"]["steps"] == 40  # 20 before, 20 after
    assert "choosing the post-processing on the held-out regions…" in out  # the seconds after training, said
    # a run resumed with other patches would mix two runs: refused, the model and its run state kept
    before = (t / "tuned.safetensors").read_bytes()
    assert main([*args[:-4], "--patch-size", "32", "--batch-size", "2", "--epochs", "3", "--resume"]) == 2
    assert "trained on patches of 64 x 64 px, this one asks for 32 x 32 px" in capsys.readouterr().err
    assert (t / "tuned.safetensors").read_bytes() == before and (t / "tuned.safetensors.resume").is_file()


@pytest.mark.parametrize("breakage,message", [
    (lambda t: (t / "masks" / "n1.tif").unlink(), "no masks with the name"),
    (lambda t: tifffile.imwrite(t / "masks" / "n1.tif", np.full((96, 96), 0.5, np.float32)), "integer instance"),
    (lambda t: tifffile.imwrite(t / "masks" / "n1.tif", np.zeros((50, 96), np.int32)), "differs from its image"),
    (lambda t: [p.unlink() for p in (t / "images").iterdir()], "no images"),
])
def test_train_bad_input_is_one_line_and_exit_code_2(train_folders, capsys, breakage, message):
    breakage(train_folders)
    t = train_folders
    assert main(["train", "unet", "--images", str(t / "images"), "--masks", str(t / "masks"), "-o",
                 str(t / "out"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (t / "out.safetensors").exists()


def test_train_refuses_an_unwritable_output(train_folders, capsys):
    t = train_folders
    assert main(["train", "unet", "--images", str(t / "images"), "--masks", str(t / "masks"), "-o",
                 str(t / "no" / "such" / "folder" / "m"), "--epochs", "1"]) == 2
    assert "cannot write the model" in capsys.readouterr().err


def test_ctrl_c_stops_training_and_keeps_the_best_model(train_folders, make_random_model):
    import signal
    import time

    t = train_folders
    exe = Path(sys.executable).with_name("napari-unet")
    proc = subprocess.Popen([str(exe), "train", str(make_random_model("cli-base")), "--images", str(t / "images"),
                             "--masks", str(t / "masks"), "-o", str(t / "interrupted"), "--epochs", "100",
                             "--patch-size", "64", "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("training"), first + proc.stderr.read()
    # Ctrl-C once training runs (the first validation's line: a fixed delay raced the first step on a busy CPU)
    while not proc.stdout.readline().startswith("step"):
        assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by user" in out
    from napari_unet.modelfile import load_model

    assert load_model(t / "interrupted.safetensors").config["provenance"]["stopped"] == "stopped by user"


def test_train_a_boundary_model_from_a_binary_one(train_folders, make_random_model):
    t = train_folders
    assert main(["train", str(make_random_model("cli-base")), "--images", str(t / "images"), "--masks",
                 str(t / "masks"), "-o", str(t / "b"), "--epochs", "1", "--patch-size", "64", "--batch-size", "2",
                 "--target", "boundary"]) == 0
    from napari_unet.modelfile import load_model

    model = load_model(t / "b.safetensors")
    assert model.target == "boundary" and model.net.out_channels == 3
    assert main(["predict", str(t / "b.safetensors"), str(t / "images" / "n0.tif"), "-o", str(t / "p")]) == 0
    assert tifffile.imread(t / "p" / "n0.tif").shape == (96, 96)


def test_train_loss_spec_errors_are_one_line(train_folders, capsys):
    t = train_folders
    assert main(["train", "unet", "--images", str(t / "images"), "--masks", str(t / "masks"), "-o", str(t / "x"),
                 "--epochs", "1", "--loss", "ce+banana"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "banana" in err[0]


def test_train_writes_checkpoints_and_stops_early(train_folders, make_random_model, monkeypatch):
    import napari_unet.modelfile as modelfile

    base = make_random_model("cli-base")
    saves = []
    real_save = modelfile.save_model
    monkeypatch.setattr(modelfile, "save_model", lambda *a, **k: saves.append(a[2]["provenance"]["stopped"])
                        or real_save(*a, **k))
    t = train_folders
    assert main(["train", str(base), "--images", str(t / "images"), "--masks",
                 str(t / "masks"), "-o", str(t / "ck"), "--epochs", "20", "--patience", "1", "--lr", "0",
                 "--patch-size", "64", "--batch-size", "2"]) == 0
    assert saves[0] == "checkpoint" and saves[-1].startswith("early stop")


def test_a_batch_goes_on_past_a_bad_file(train_folders, make_random_model, capsys):
    """Every readable input is predicted; each failure is one line; the exit code is 2 at the end."""
    t = train_folders
    images = sorted((t / "images").iterdir())
    bad = t / "images" / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    assert main(["predict", str(make_random_model("cli-base")), str(images[0]), str(bad), *map(str, images[1:]),
                 "-o", str(t / "batch")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("napari-unet: error:" in line and "broken.tif" in line for line in err) == 1
    assert "1 of" in err[-1]
    assert sorted(p.name for p in (t / "batch").iterdir()) == sorted(p.name for p in images)


def test_object_size_options_of_train_and_predict(train_folders, make_random_model, capsys):
    """``train --object-diameter`` stores the size the network was trained at; ``predict`` resizes
    for it (labels keep the image's size) and ``--diameter`` overrides the model's own."""
    from napari_unet.modelfile import load_model
    from napari_unet.scaling import median_diameter

    t = train_folders
    base = make_random_model("cli-sized")
    masks = sorted((t / "masks").iterdir())
    # (as fine-tuning measures them: objects cut by the image's edge left out)
    diameter = float(np.median([median_diameter(tifffile.imread(p), whole=True) for p in masks]))
    assert main(["train", str(base), "--images", str(t / "images"), "--masks", str(t / "masks"), "-o",
                 str(t / "sized"), "--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "64",
                 "--object-diameter", str(round(diameter / 2, 2)), "--keep-worse"]) == 0
    tuned = load_model(t / "sized.safetensors")
    assert tuned.object_diameter == pytest.approx(diameter / 2, abs=0.01)
    assert tuned.scale() == pytest.approx(0.5, rel=0.01)
    image = sorted((t / "images").iterdir())[0]
    for extra in ([], ["--diameter", str(diameter / 2)], ["--object-size", str(diameter)]):
        assert main(["predict", str(t / "sized.safetensors"), str(image), "-o", str(t / "pred-sized"), *extra]) == 0
        assert tifffile.imread(t / "pred-sized" / image.name).shape == tifffile.imread(image).shape[:2]
    capsys.readouterr()
    assert main(["predict", str(t / "sized.safetensors"), str(image), "-o", str(t / "bad"), "--diameter", "-3"]) == 2
    assert "positive number of pixels" in capsys.readouterr().err


def test_export_writes_a_bioimageio_package_that_predict_reads(tmp_path, make_random_model, capsys):
    pytest.importorskip("bioimageio.core")
    from napari_unet.bioimageio import is_package

    model = make_random_model("tiny-export")
    assert main(["export", str(model), str(tmp_path / "tiny-export"), "--author", "Ada Lovelace"]) == 0
    out = capsys.readouterr().out
    package = tmp_path / "tiny-export.zip"
    assert is_package(package) and f"wrote {package}" in out and "model test passed" in out
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8))
    assert main(["predict", str(package), str(image), "-o", str(tmp_path / "out")]) == 0
    assert tifffile.imread(tmp_path / "out" / "img.tif").shape == (64, 80)


def test_export_errors_are_one_line_and_exit_code_2(tmp_path, make_random_model, capsys):
    pytest.importorskip("bioimageio.core")
    assert main(["export", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.zip")]) == 2
    assert capsys.readouterr().err.strip().startswith("napari-unet: error: Model file")
    valid = make_random_model("tiny-valid-export", architecture="unet-valid")
    assert main(["export", str(valid), str(tmp_path / "x.zip"), "--no-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid padding" in err
    assert not (tmp_path / "x.zip").exists()


def test_evaluate_pairs_by_name_after_predict_with_probabilities(tmp_path, capsys):
    """``predict -o out/ --probabilities`` then ``evaluate --pred out/``: the probability maps are
    not predictions, ground truth named like the images (a.png) pairs with a.tif, and a
    prediction without ground truth is said and left out."""
    from skimage.io import imsave

    truth = np.zeros((32, 32), np.uint8)
    truth[4:12, 4:12], truth[16:28, 16:28] = 1, 2
    (tmp_path / "gt").mkdir()
    (tmp_path / "out").mkdir()
    imsave(tmp_path / "gt" / "a.png", truth, check_contrast=False)
    tifffile.imwrite(tmp_path / "out" / "a.tif", truth.astype(np.int32))
    tifffile.imwrite(tmp_path / "out" / "a_probabilities.tif", (truth > 0).astype(np.float32))
    tifffile.imwrite(tmp_path / "out" / "b.tif", truth.astype(np.int32))
    assert main(["evaluate", "--pred", str(tmp_path / "out"), "--gt", str(tmp_path / "gt")]) == 0
    captured = capsys.readouterr()
    assert "1 prediction(s) without ground truth are not scored: b.tif" in captured.err
    rows = [line.split() for line in captured.out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["a.png", "mean"] and float(rows[0][1]) == 1.0
