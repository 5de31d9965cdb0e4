"""``napari-unet export`` never replaces an existing package unless ``--overwrite``, like ``train``:
also where ``.zip`` is appended to the output named."""

import pytest

from napari_unet.cli import main

pytest.importorskip("bioimageio.core")


def test_export_refuses_an_existing_package_unless_overwrite(tmp_path, make_random_model, capsys):
    model = str(make_random_model("tiny-export-overwrite"))
    package = tmp_path / "pkg.zip"
    package.write_bytes(b"someone's package")
    for output in (package, tmp_path / "pkg"):  # "pkg" is written as pkg.zip
        assert main(["export", model, str(output), "--no-check"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"napari-unet: error: {package} already exists: choose another output, or pass --overwrite " \
                      "to replace it"
        assert package.read_bytes() == b"someone's package"
    assert main(["export", model, str(tmp_path / "pkg"), "--no-check", "--overwrite"]) == 0
    assert f"wrote {package}" in capsys.readouterr().out
    assert package.read_bytes() != b"someone's package"
    assert [p.name for p in tmp_path.iterdir()] == ["pkg.zip"]
