"""A package exported from a model file older than one of its network's arguments imports again: the
export writes the complete arguments, and an import (of such a package written before that was so)
gives the arguments the config predates their old values, as load_model does."""

import json
import zipfile

import pytest
import torch
import yaml
from safetensors.torch import save_file

pytest.importorskip("bioimageio.core")

from napari_unet import bioimageio  # noqa: E402
from napari_unet.modelfile import load_model, make_config  # noqa: E402
from napari_unet.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def old_file_and_package(tmp_path_factory):
    """A U-Net++ file written before ``upsample`` existed (transposed up-convolutions), and its package."""
    folder = tmp_path_factory.mktemp("legacy")
    torch.manual_seed(0)
    net = build_model("unet++", features=(4, 8, 16), upsample="transpose").eval()
    config = make_config(net)
    del config["arguments"]["upsample"]
    path = folder / "old.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"napari_unet": json.dumps(config)})
    return path, bioimageio.export_model(path, folder / "old.zip", check=False)


def _same_predictions(a, b) -> None:
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a.net(x), b.net(x), atol=1e-5)


def test_a_package_of_an_older_file_imports_again(old_file_and_package):
    path, package = old_file_and_package
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert rdf["config"]["napari_unet"]["arguments"]["upsample"] == "transpose"
    imported = bioimageio.import_model(package)
    assert imported.net.config["upsample"] == "transpose" and imported.config["arguments"] == imported.net.config
    _same_predictions(imported, load_model(path))


def test_a_package_written_with_incomplete_arguments_imports(old_file_and_package, tmp_path):
    """Packages exported before the export wrote complete arguments lack the newer ones."""
    path, package = old_file_and_package
    rewritten = tmp_path / "incomplete.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(rewritten, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                del rdf["config"]["napari_unet"]["arguments"]["upsample"]
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            target.writestr(name, data)
    imported = bioimageio.import_model(rewritten)
    assert imported.net.config["upsample"] == "transpose" and imported.config["arguments"]["upsample"] == "transpose"
    _same_predictions(imported, load_model(path))
