"""BioImage.IO packages: export passes bioimageio.core's own validation and model test, and an
imported package predicts what the original model predicts through napari-unet's tiled predictor."""

import shutil
import zipfile

import numpy as np
import pytest
import yaml

pytest.importorskip("bioimageio.core")

from napari_unet import bioimageio  # noqa: E402
from napari_unet.catalog import ModelFileError  # noqa: E402
from napari_unet.inference.predictor import predict  # noqa: E402
from napari_unet.modelfile import load_model  # noqa: E402
from napari_unet.synthetic import fluorescent_nuclei  # noqa: E402


@pytest.fixture(scope="module")
def tiny_package(make_random_model, tmp_path_factory):
    """A tiny random 3-level U-Net and its package (exported without the built-in test: the tests run it)."""
    model = make_random_model("tiny-bioimageio")
    return model, bioimageio.export_model(model, tmp_path_factory.mktemp("pkg") / "tiny.zip", check=False,
                                          authors=["Ada Lovelace", {"name": "B. Tester", "affiliation": "Lab"}])


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def _passed(summary) -> list[str]:
    """The names of the summary's checks; asserts that every one passed."""
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    return [d.name for d in summary.details]


def test_export_passes_bioimageio_validation_and_model_test(tiny_package):
    from bioimageio.spec import InvalidDescr, load_description

    model, package = tiny_package
    descr = load_description(str(package), perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary
    names = _passed(bioimageio.test_package(package))
    for fmt in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in names
        assert any(n.startswith(f"Run {fmt} inference for inputs with batch_size: 2") for n in names)


def test_export_describes_the_model(tiny_package):
    model, package = tiny_package
    lm = load_model(model)
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["license"] == "BSD-3-Clause"
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "B. Tester"]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [a["size"] for a in inp["axes"][2:]] == [{"min": 4, "step": 4}] * 2  # 3 levels: divisor 4
    scale = next(p for p in inp["preprocessing"] if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"], scale["axes"]) == (1.0, 99.8, ["y", "x"])
    assert out["postprocessing"] == [{"id": "softmax", "kwargs": {"axis": "channel"}}]
    assert out["axes"][1]["channel_names"] == ["background", "foreground"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert rdf["config"]["napari_unet"]["arguments"] == lm.config["arguments"]
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        probabilities = np.load(archive.open("test_output.npy"))
        readme = archive.read("README.md").decode()
    assert {"README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.pt", "weights_torchscript.pt",
            "napari_unet_architecture.py"} <= names
    assert probabilities.shape == (1, 2, 256, 256)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert "pip install napari-unet" in readme and "## Validation" in readme


@pytest.mark.parametrize("weight_format", ["auto", "torchscript", "pytorch_state_dict"])
def test_round_trip_predicts_what_the_original_predicts(tiny_package, weight_format):
    model, package = tiny_package
    imported = load_model(package) if weight_format == "auto" else \
        bioimageio.import_model(package, weight_format=weight_format)
    image = fluorescent_nuclei((203, 170), n_nuclei=20, seed=4)[0]  # odd sizes, several tiles of 96 px
    expected = predict(model, image, device="cpu", tile_size=96, halo=16).probabilities
    got = predict(imported, image, device="cpu", tile_size=96, halo=16)
    assert got.probabilities.shape == expected.shape
    np.testing.assert_allclose(got.probabilities, expected, atol=1e-4)
    assert imported.target == "binary" and imported.normalization["kind"] == "percentile"
    # napari-unet's own packages are rebuilt from the registry unless the TorchScript is asked for
    assert (imported.config["architecture"] == bioimageio.PACKAGE_ARCHITECTURE) == (weight_format == "torchscript")


def test_package_config_keeps_the_model_settings(tiny_package):
    model, package = tiny_package
    config = load_model(package).config
    assert config["provenance"]["bioimageio"]["weights"] == "pytorch_state_dict"
    from napari_unet.catalog import peek_config

    assert peek_config(str(package))["architecture"] == "unet"  # read from the YAML, no bioimageio


@pytest.mark.parametrize("name", ["unet", pytest.param("unet++", marks=pytest.mark.slow),
                                  pytest.param("unet3+", marks=pytest.mark.slow),
                                  pytest.param("resunet", marks=pytest.mark.slow),
                                  pytest.param("mobile-unet", marks=pytest.mark.slow),
                                  pytest.param("eff-unet", marks=pytest.mark.slow),
                                  pytest.param("unet-3d", marks=pytest.mark.slow),
                                  pytest.param("unet-2.5d-stack", marks=pytest.mark.slow)])
def test_bundled_models_export_and_pass_the_model_test(name, tmp_path):
    """export_model(check=True) runs bioimageio.core's test_model and raises unless it passed; the
    test is run again here on the written file."""
    package = bioimageio.export_model(name, tmp_path / f"{name}.zip")
    rdf = _rdf(package)
    cited = [c.get("doi") or c.get("url") for c in rdf["cite"]]  # the U-Net paper, then the variant's
    assert cited == ["10.1007/978-3-319-24574-4_28"] + [doi or url for _, doi, url in
                                                        bioimageio.VARIANT_PAPERS.get(name, [])]
    _passed(bioimageio.test_package(package, weight_format="torchscript"))
    if name == "unet":  # the model card is the documentation; the object size is in the description
        assert "objects about 30 px across" in rdf["description"]
        with zipfile.ZipFile(package) as archive:
            assert archive.read("README.md").decode().startswith("# unet")


def test_valid_padding_is_refused_with_one_line(make_random_model, tmp_path):
    model = make_random_model("tiny-valid", architecture="unet-valid")
    with pytest.raises(ValueError, match=r"valid padding .* export a model with same padding"):
        bioimageio.export_model(model, tmp_path / "v.zip")
    assert not (tmp_path / "v.zip").exists()


@pytest.mark.slow
def test_a_trace_that_fixes_a_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'unet-2\.5d' cannot be exported: its TorchScript trace does not reproduce"):
        bioimageio.export_model("unet-2.5d", tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists()


def _rewrite(package, tmp_path, change, name="changed.zip", extra=None):
    """A copy of ``package`` whose rdf.yaml went through ``change`` (and with ``extra`` files)."""
    out = tmp_path / name
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                rdf = yaml.safe_load(data)
                change(rdf)
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
        for item, data in (extra or {}).items():
            dst.writestr(item, data)
    return out


def test_a_package_that_is_not_a_model_gets_one_clear_line(tmp_path):
    package = tmp_path / "dataset.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump({
            "format_version": "0.3.0", "type": "dataset", "name": "some nuclei", "description": "images",
            "authors": [{"name": "A"}], "cite": [{"text": "x", "doi": "10.1000/xyz"}], "license": "MIT"}))
    with pytest.raises(ModelFileError, match=r"^dataset\.zip: a BioImage\.IO dataset package, not a model"):
        load_model(package)
    with pytest.raises(ModelFileError, match=r"^dataset\.zip: a BioImage\.IO dataset package, not a model"):
        bioimageio.check_package_quickly(package)


def test_weights_napari_unet_cannot_run_get_one_clear_line(tiny_package, tmp_path):
    _, package = tiny_package

    def onnx_only(rdf):
        rdf["weights"] = {"onnx": {"source": "model.onnx", "opset_version": 17}}

    changed = _rewrite(package, tmp_path, onnx_only, extra={"model.onnx": b"\x08\x07"})
    with pytest.raises(ModelFileError, match=r"it has only onnx weights; napari-unet runs pytorch_state_dict or "
                                             r"torchscript weights"):
        load_model(changed)
    with pytest.raises(ModelFileError, match=r"cannot run onnx weights"):
        bioimageio.import_model(changed, weight_format="onnx")


def test_an_output_of_another_size_is_not_segmentation(tiny_package, tmp_path):
    _, package = tiny_package

    def half_size(rdf):
        rdf["outputs"][0]["axes"][2]["size"]["offset"] = -2

    with pytest.raises(ModelFileError, match=r"not a segmentation model: its output axis y does not have the input"):
        load_model(_rewrite(package, tmp_path, half_size))


def test_a_plain_zip_is_still_told_to_unpack(tmp_path):
    plain = tmp_path / "other.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("model/readme.txt", "hi")
    with pytest.raises(ModelFileError, match=r"zip archive.*unpack it.*rdf\.yaml"):
        load_model(plain)


def test_a_foreign_package_runs_with_its_axes_and_preprocessing(tmp_path):
    """A package napari-unet did not write: input (batch, y, x, channel) normalised to zero mean and unit
    variance, then scaled; a TorchScript network returning a sigmoid probability (no post-processing)."""
    import torch

    class Net(torch.nn.Module):
        def forward(self, x):  # (B, Y, X, C) -> (B, 1, Y, X)
            return torch.sigmoid(3 * x.mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) - 0.5)

    folder = tmp_path / "foreign"
    folder.mkdir()
    torch.jit.script(Net()).save(str(folder / "net.pt"))
    image = fluorescent_nuclei((64, 48), n_nuclei=6, seed=1)[0].astype(np.float32)
    np.save(folder / "in.npy", image[None, :, :, None])
    x = (image - image.mean()) / (image.std() + 1e-6) * 0.5 + 0.1
    expected = 1 / (1 + np.exp(-(3 * x - 0.5)))
    np.save(folder / "out.npy", expected[None, None].astype(np.float32))
    rdf = {"format_version": "0.5.4", "type": "model", "name": "foreign sigmoid", "description": "a test model",
           "authors": [{"name": "A"}], "cite": [{"text": "x", "doi": "10.1000/xyz"}], "license": "MIT",
           "inputs": [{"id": "image", "axes": [{"type": "batch"}, {"type": "space", "id": "y", "size": {"min": 8, "step": 8}},
                                               {"type": "space", "id": "x", "size": {"min": 8, "step": 8}},
                                               {"type": "channel", "channel_names": ["c"]}],
                       "test_tensor": {"source": "in.npy"}, "data": {"type": "float32"},
                       "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}},
                                         {"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": 0.1}}]}],
           "outputs": [{"id": "mask", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["fg"]},
                                               {"type": "space", "id": "y", "size": {"tensor_id": "image", "axis_id": "y"}},
                                               {"type": "space", "id": "x", "size": {"tensor_id": "image", "axis_id": "x"}}],
                        "test_tensor": {"source": "out.npy"}, "data": {"type": "float32"}}],
           "weights": {"torchscript": {"source": "net.pt", "pytorch_version": "2.0"}}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    _passed(bioimageio.test_package(folder / "rdf.yaml"))  # the package itself is right
    lm = load_model(folder / "rdf.yaml")
    assert (lm.in_channels, lm.target, lm.normalization) == (1, "binary", {"kind": "mean_std", "eps": 1e-6})
    got = predict(lm, image, device="cpu", tile_size=32, halo=8)
    np.testing.assert_allclose(got.foreground, expected, atol=1e-4)


def test_without_bioimageio_core_the_messages_say_how_to_install(tiny_package, tmp_path, monkeypatch):
    _, package = tiny_package
    monkeypatch.setattr(bioimageio, "available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "napari-unet\[bioimageio\]"'):
        bioimageio.export_model("unet", tmp_path / "u.zip")
    with pytest.raises(ModelFileError, match=r'tiny\.zip is a BioImage\.IO package\. .*pip install "napari-unet'):
        load_model(package)


def test_export_is_atomic_and_replaces_the_old_package(tiny_package, tmp_path):
    model, package = tiny_package
    target = tmp_path / "same.zip"
    shutil.copy(package, target)
    before = target.read_bytes()
    with pytest.raises(ValueError):  # a failing export leaves the previous file
        bioimageio.export_model(model, target, check=False, authors=[{"name": "a/b"}])  # a slash: invalid author
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["same.zip"]


def test_a_freshly_fine_tuned_model_exports_and_passes_the_model_test(make_random_model, tmp_path, one_thread):
    from napari_unet.finetune import FinetuneSettings, finetune_iter
    from napari_unet.inference.predictor import run_to_end

    image, labels = (np.asarray(a) for a in fluorescent_nuclei((128, 128), 12, seed=5)[:2])
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2,
                                device="cpu", validate=False)
    result = run_to_end(finetune_iter(str(make_random_model("to-fine-tune")), [(image, labels, None)], settings,
                                      out_dir=tmp_path, name="fine-tuned"))
    package = bioimageio.export_model(result.path, tmp_path / "fine-tuned.zip")  # runs the model test first
    _passed(bioimageio.test_package(package))
    assert _rdf(package)["config"]["napari_unet"]["provenance"]["fine_tuned"] is True
