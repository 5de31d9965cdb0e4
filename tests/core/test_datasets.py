"""The fixed, seeded splits of the training data (``napari_unet.datasets``), on a fake data root."""

from __future__ import annotations

import numpy as np

from napari_unet import datasets


def _root(tmp_path, folders: dict[str, int]):
    for folder, n in folders.items():
        (tmp_path / folder / "images").mkdir(parents=True)
        for i in range(n):
            (tmp_path / folder / "images" / f"{folder[:1]}{i:03d}.tif").write_bytes(b"")
    return tmp_path


def test_images_an_ancestor_trained_on_are_never_scored_and_the_draw_is_kept(tmp_path):
    """The first bundled weights trained on the first folder (but its fixed held-out images):
    the held-out draw over both folders stays what it was, without those images, which train."""
    root = _root(tmp_path, {"first": 20, "more": 80})
    fixed = ("f000", "f001", "f002")
    plain = datasets.Source("x", ("first", "more"), "test", held_out=fixed, held_out_fraction=0.2)
    ruled = datasets.Source("x", ("first", "more"), "test", held_out=fixed, held_out_fraction=0.2,
                            trained_before=("first",))
    train0, held0 = datasets.split(plain, root)
    train, held = datasets.split(ruled, root)
    seen = {f"f{i:03d}" for i in range(3, 20)}
    assert set(fixed) <= set(held) and not seen & set(held)
    assert seen & set(held0)  # (the draw did pick some of them: the rule is what keeps them out)
    assert set(held) == set(held0) - seen  # every other held-out image stays held out
    assert set(train) == set(train0) | (set(held0) & seen)  # they train instead
    assert not set(train) & set(held) and sorted(train + held) == sorted(train0 + held0)
    assert datasets.split(ruled, root) == (train, held)  # the same on every call


def test_the_real_splits_never_score_what_the_first_weights_trained_on():
    """On this machine's data (skipped without it): no held-out nuclei image is one of the 47
    that the nuclei-only weights trained on."""
    import pytest

    source = datasets.SOURCES["nuclei"]
    if not datasets.available(source):
        pytest.skip("the DSB2018 data is not on this machine")
    first = set(datasets.image_names(source, folders=("nuclei_dsb2018",))) - set(source.held_out)
    train, held = datasets.split(source)
    assert len(first) == 47 and not first & set(held) and first <= set(train)
    assert np.isin(list(source.held_out), held).all()
