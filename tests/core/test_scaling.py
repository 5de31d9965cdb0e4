"""Object size: measuring diameters, resizing for the network and back, and what model files,
prediction, post-processing and fine-tuning do with a declared object diameter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_unet.inference.postprocess import probabilities_to_labels
from napari_unet.inference.predictor import predict, run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.modelfile import ModelFileError, load_model, make_config, read_config, save_model
from napari_unet.scaling import (check_diameter, median_diameter, resize_image, resize_labels, scale_for,
                                 scaled_shape)


def discs(shape, centres, radius) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = i
    return labels


def test_median_diameter_is_the_equivalent_disc_and_ignores_fragments_and_unreviewed_pixels():
    labels = discs((200, 200), [(40, 40), (40, 140), (140, 90)], 15)
    labels[190:193, 190:193] = 9  # a 9-pixel fragment
    assert median_diameter(labels) == pytest.approx(30, abs=1)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:80] = True  # two of the three discs
    assert median_diameter(labels, reviewed) == pytest.approx(30, abs=1)
    assert median_diameter(np.zeros((50, 50), np.int32)) is None
    # a stack: areas are counted per plane
    assert median_diameter(np.stack([labels, labels])) == pytest.approx(30, abs=1)


def test_objects_cut_by_the_reviewed_window_are_left_out_of_the_whole_size():
    """A reviewed window over discs of 68 px that cuts most of them (as 'Mark visible area
    reviewed' does): their parts are not objects of the size measured, when whole ones remain."""
    labels = discs((400, 400), [(y, x) for y in (50, 130, 210, 290) for x in (50, 130, 210, 290)], 34)
    window = np.zeros(labels.shape, bool)
    window[100:260, 100:260] = True  # one whole disc (130, 130) ... and cut ones around
    assert median_diameter(labels) == pytest.approx(68, abs=1)
    assert median_diameter(labels, window) < 60  # the cut parts pull the median down
    assert median_diameter(labels, window, whole=True) == pytest.approx(68, abs=1)
    only_cut = np.zeros(labels.shape, bool)
    only_cut[40:60, :] = True  # nothing whole: every part counts, as before
    assert median_diameter(labels, only_cut, whole=True) == median_diameter(labels, only_cut)


def test_scale_for_and_check_diameter():
    assert scale_for(30, 60) == 0.5 and scale_for(None, 60) == 1.0 and scale_for(30, None) == 1.0
    assert scale_for(30, 31) == 1.0  # within 5 %: not worth a resampling pass
    with pytest.raises(ValueError, match="check the diameter"):
        scale_for(30, 3000)
    assert check_diameter(0) is None and check_diameter("12.5") == 12.5
    for bad in (-3, "big", float("nan")):
        with pytest.raises(ValueError, match="object diameter"):
            check_diameter(bad)


def test_resizing_keeps_ids_values_and_leading_axes():
    labels = discs((120, 100), [(30, 30), (80, 60)], 12)
    small = resize_labels(labels, scaled_shape(labels.shape, 0.5))
    assert small.shape == (60, 50) and set(np.unique(small)) == {0, 1, 2}
    back = resize_labels(small, labels.shape)
    assert back.shape == labels.shape and np.mean(back == labels) > 0.97
    image = np.stack([labels * 10.0, labels * 20.0]).astype(np.float32)  # (C, H, W)
    resized = resize_image(image, (60, 50))
    assert resized.shape == (2, 60, 50) and resized.dtype == np.float32
    assert resized[1].max() == pytest.approx(2 * resized[0].max(), rel=1e-4)  # channels stay apart
    assert 0 <= resized.min() and resized.max() <= 40.0


def test_model_files_carry_the_object_diameter_and_reject_bad_ones(tmp_path):
    from napari_unet.models import build_model

    net = build_model("unet", features=[4, 8, 16])
    path = save_model(tmp_path / "m", net, make_config(net, "unet", object_diameter=20, image_object_diameter=40))
    loaded = load_model(path)
    assert (loaded.object_diameter, loaded.image_object_diameter) == (20, 40)
    assert loaded.scale() == 0.5 and loaded.scale(20) == 1.0 and loaded.scale(10) == 2.0
    plain = load_model(save_model(tmp_path / "p", net, make_config(net, "unet")))
    assert plain.object_diameter is None and plain.scale() == 1.0 and plain.scale(80) == 1.0
    config = read_config(path)
    config["input"]["object_diameter"] = -1
    with pytest.raises(ModelFileError, match="object_diameter"):
        save_model(tmp_path / "bad", net, config)


@pytest.fixture
def sized_model(tmp_path):
    """A small random U-Net that declares it works at 20 px on images whose objects measure 40."""
    import torch

    from napari_unet.models import build_model

    torch.manual_seed(0)
    net = build_model("unet", features=[4, 8, 16])
    return save_model(tmp_path / "sized", net, make_config(net, "unet", object_diameter=20, image_object_diameter=40))


def test_prediction_resizes_for_the_network_and_returns_the_image_shape(sized_model, one_thread, monkeypatch):
    from napari_unet.inference import predictor as predictor_module

    seen = []
    real = predictor_module.Predictor.predict_plane

    def spy(self, plane, *args, **kwargs):
        seen.append(tuple(plane.shape))
        return real(self, plane, *args, **kwargs)

    monkeypatch.setattr(predictor_module.Predictor, "predict_plane", spy)
    image = np.random.default_rng(0).random((101, 130)).astype(np.float32)
    prediction = predict(str(sized_model), image, device="cpu")
    assert seen == [(1, 50, 65)] and prediction.scale == 0.5
    assert prediction.probabilities.shape == (1, 101, 130)
    seen.clear()
    same = predict(str(sized_model), image, device="cpu", diameter=20)  # objects already at the network's size
    assert seen == [(1, 101, 130)] and same.scale == 1.0
    seen.clear()
    stack = np.stack([image, image[::-1]])  # planes are resized one by one
    labels = run_to_end(segment_iter(str(sized_model), stack, device="cpu")).labels
    assert seen == [(1, 50, 65)] * 2 and labels.shape == (2, 101, 130)


def test_post_processing_sizes_are_network_pixels():
    probs = (discs((200, 200), [(50, 50), (140, 140)], 10) > 0).astype(np.float32)[None]  # two discs of 317 px
    assert probabilities_to_labels(probs, min_size=200).max() == 2
    # at scale 0.5 an image pixel is half a network pixel: 317 image px are 79 network px, under 200
    assert probabilities_to_labels(probs, min_size=200, scale=0.5).max() == 0
    assert probabilities_to_labels(probs, min_size=50, scale=0.5).max() == 2
    # two touching discs split at both scales (the split depth grows with the pixel size)
    touching = (discs((120, 160), [(60, 50), (60, 100)], 28) > 0).astype(np.float32)[None]
    assert probabilities_to_labels(touching, min_size=10).max() == 2
    assert probabilities_to_labels(touching, min_size=10, scale=0.5).max() == 2
    with pytest.raises(ValueError, match="scale"):
        probabilities_to_labels(probs, scale=0)


def _settings(**kwargs):
    from napari_unet.finetune import FinetuneSettings

    return FinetuneSettings(**{"minutes": None, "epochs": 1, "steps_per_epoch": 1, "patch_size": 64,
                               "batch_size": 1, "device": "cpu", "augment": False, "only_if_better": False,
                               **kwargs})


def _big_objects(seed=0, n=3):
    """Images of 256 px with discs of 60 px across (larger than the default 30 px)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        centres = [(int(rng.integers(40, 216)), int(rng.integers(40, 216))) for _ in range(5)]
        labels = np.zeros((256, 256), np.int32)
        for k, c in enumerate(centres, start=1):
            disc = discs((256, 256), [c], 30) > 0
            labels[disc & (labels == 0)] = k
        image = (labels > 0) * 200.0 + rng.normal(50, 10, labels.shape)
        out.append((image.astype(np.float32), labels, None))
    return out


def test_fine_tuning_shrinks_large_objects_and_the_model_remembers_it(make_random_model, tmp_path, one_thread,
                                                                      monkeypatch):
    from napari_unet.training import finetune

    triples = _big_objects()
    diameter = float(np.median([median_diameter(lab) for _, lab, _ in triples]))
    from napari_unet.training import trainer

    seen, real = [], trainer.train_iter

    def spy(net, train, val, *args, **kwargs):
        seen.append(([np.shape(t[1]) for t in train], [np.shape(v[1]) for v in val]))
        return (yield from real(net, train, val, *args, **kwargs))

    monkeypatch.setattr(trainer, "train_iter", spy)
    base = make_random_model("scale-base")
    result = run_to_end(finetune.finetune_iter(str(base), triples, _settings(), out_dir=tmp_path, name="shrunk"))
    scale = 30 / diameter
    assert 0.45 < scale < 0.6
    train_shapes, val_shapes = seen[0]
    # a strip of each image is held out, then everything is resized by the same factor
    assert all(max(s) == round(256 * scale) for s in train_shapes + val_shapes)
    loaded = load_model(result.path)
    assert loaded.object_diameter == 30 and loaded.image_object_diameter == pytest.approx(diameter, abs=0.01)
    assert loaded.scale() == pytest.approx(scale, rel=0.01)
    assert loaded.config["provenance"]["scale"] == pytest.approx(scale)
    assert "trained at 30 px" in loaded.config["card"]
    # a base that declares a diameter is fine-tuned at it; resize=False keeps the images' size
    seen.clear()
    result = run_to_end(finetune.finetune_iter(str(result.path), triples, _settings(), out_dir=tmp_path,
                                               name="again"))
    assert all(max(s) == round(256 * scale) for s in seen[0][0])
    assert load_model(result.path).object_diameter == 30
    seen.clear()
    result = run_to_end(finetune.finetune_iter(str(base), triples, _settings(resize=False), out_dir=tmp_path,
                                               name="native"))
    assert all(max(s) == 256 for s in seen[0][0]) and load_model(result.path).object_diameter is None
    # resize=False from a base made for objects of 30 px: trained on the images as they are, the
    # model takes them as they are (it did ask for the size and shrank them to 30 px)
    seen.clear()
    sized = run_to_end(finetune.finetune_iter(str(result.path.with_name("shrunk.safetensors")), triples,
                                              _settings(resize=False, validate=False), out_dir=tmp_path,
                                              name="sized-native"))
    assert all(max(s) == 256 for s in seen[0][0])
    assert load_model(sized.path).object_diameter is None and load_model(sized.path).scale() == 1


def test_small_objects_are_not_enlarged_by_default(make_random_model, nuclei_sample, tmp_path, one_thread):
    from napari_unet.finetune import finetune_iter

    image, labels = (np.asarray(a) for a in nuclei_sample[:2])
    d = median_diameter(labels)
    assert d < 30
    crops = [(image[:256, :256], labels[:256, :256], None), (image[256:, 256:], labels[256:, 256:], None)]
    result = run_to_end(finetune_iter(str(make_random_model("small-base")), crops, _settings(), out_dir=tmp_path,
                                      name="small"))
    loaded = load_model(result.path)
    assert loaded.scale() == 1.0 and loaded.object_diameter == pytest.approx(loaded.image_object_diameter)
    assert math.isfinite(loaded.object_diameter)


@pytest.mark.parametrize("scale", [0.5, 0.667, 1.37, 0.31])
def test_a_window_is_resized_on_the_planes_own_grid(scale):
    """resize_window / unresize_window give, inside a window, what resizing the whole plane (and
    back) gives there, so overlapping blocks of a large image agree where they overlap."""
    from scipy import ndimage as ndi

    from napari_unet.scaling import resize_window, unresize_window

    rng = np.random.default_rng(0)
    plane = ndi.gaussian_filter(rng.random((2, 300, 280)).astype(np.float32), (0, 2, 2))
    full = resize_image(plane, scaled_shape(plane.shape, scale))
    back = resize_image(full, plane.shape)
    (r0, c0), (h, w), m = (60, 45), (150, 170), 12  # m: away from the window's edges (the blur sees less there)
    resized, (j0, k0) = resize_window(plane[:, r0:r0 + h, c0:c0 + w], (r0, c0), plane.shape, scale)
    on_grid = full[:, j0:j0 + resized.shape[1], k0:k0 + resized.shape[2]]
    np.testing.assert_allclose(resized[:, m:-m, m:-m], on_grid[:, m:-m, m:-m], atol=1e-5)
    returned = unresize_window(on_grid, (j0, k0), plane.shape, scale, (r0, c0), (h, w))
    assert returned.shape == (2, h, w)
    np.testing.assert_allclose(returned[:, 2 * m:-2 * m, 2 * m:-2 * m], back[:, r0 + 2 * m:r0 + h - 2 * m,
                                                                                c0 + 2 * m:c0 + w - 2 * m], atol=1e-5)
