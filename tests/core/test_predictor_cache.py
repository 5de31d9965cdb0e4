"""One predictor settings object, the key of every predictor cache (docks and block/file workers)."""

import os
import shutil

import pytest

from napari_unet.inference import runners
from napari_unet.inference.predictor import DEFAULT_HALO, Predictor
from napari_unet.inference.predictor_cache import PredictorCache, PredictorSettings
from napari_unet.modelfile import ModelFileError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_file(make_random_model, tmp_path):
    """A model file of its own (a test rewrites it)."""
    path = tmp_path / "model.safetensors"
    shutil.copy(make_random_model("cache"), path)
    return str(path)


def test_equal_settings_are_one_key_whatever_their_spelling(model_file):
    a = PredictorSettings(model_file, device="cpu", tile_size="512")
    b = PredictorSettings.of(model_file, {"device": "cpu", "tile_size": 512, "halo": DEFAULT_HALO})
    assert a == b and hash(a) == hash(b) and a.tile_size == 512
    assert PredictorSettings(model_file, tile_size="auto").tile_size == "auto"
    assert a != PredictorSettings(model_file, device="cpu", tile_size=512, side_outputs=True)
    assert a.arguments() == {"device": "cpu", "tile_size": 512, "halo": DEFAULT_HALO, "blend": a.blend,
                             "batch_size": "auto", "side_outputs": False}
    with pytest.raises(TypeError):
        PredictorSettings.of(model_file, {"tiles": 3})  # as Predictor(**settings) would
    with pytest.raises(ValueError, match="tile_size must be a number"):
        PredictorSettings(model_file, tile_size="big").build()  # the Predictor's own message


def test_the_cache_reuses_predictors_and_loads_a_model_once(model_file):
    cache = PredictorCache(capacity=2)
    cpu = PredictorSettings(model_file, device="cpu")
    first = cache.get(cpu)
    assert isinstance(first, Predictor) and cache.get(PredictorSettings(model_file, device="cpu")) is first
    small = cache.get(PredictorSettings(model_file, device="cpu", tile_size=128))
    assert small is not first and small.tile_size == 128 and small.model is first.model  # one loaded model
    assert cache.loads == 1 and len(cache) == 2
    cache.get(cpu)  # the most recently used now: the 128 px one goes next
    cache.get(PredictorSettings(model_file, device="cpu", tile_size=256))
    assert cpu in cache and PredictorSettings(model_file, device="cpu", tile_size=128) not in cache
    assert len(cache) == 2 and cache.loads == 1


def test_a_rewritten_model_file_is_another_key(model_file):
    cache = PredictorCache()
    before = PredictorSettings(model_file, device="cpu").stamped()
    predictor = cache.get(before)
    stat = os.stat(model_file)
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # saved again
    after = PredictorSettings(model_file, device="cpu").stamped()
    assert after != before and not after.same_model(before)
    assert cache.get(after) is not predictor and cache.loads == 2 and len(cache) == 1
    os.remove(model_file)
    with pytest.raises(ModelFileError, match="is gone"):
        PredictorSettings(model_file).stamped()


def test_block_and_file_workers_use_the_same_key(model_file, monkeypatch):
    monkeypatch.setattr(runners, "_CACHE", PredictorCache())
    loads = runners.model_loads()
    predictor = runners.cached_predictor(model_file, {"device": "cpu", "tile_size": "auto"})
    assert runners.cached_predictor(model_file, {"device": "cpu"}) is predictor
    assert runners.cached_predictor(model_file, PredictorSettings(model_file, device="cpu")) is predictor
    assert runners.cached_predictor(model_file, {"device": "cpu", "tile_size": 96}).model is predictor.model
    assert runners.model_loads() == loads + 1
    with pytest.raises(ValueError, match="not a model in memory"):
        runners.cached_predictor(None, {})
