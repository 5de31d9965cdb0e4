"""Faults: cancels at random points, SIGKILL mid-write, out of memory, a loss gone NaN, pickles.

Every test checks the promise to the user, not just "no exception": the model files and the
training set on disk are byte-for-byte what they were, the previous model still loads and
predicts the same, and the next run works.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.finetune import FinetuneSettings, finetune_iter
from napari_unet.inference.predictor import PredictionCancelled, Predictor, predict, predict_iter, run_to_end
from napari_unet.inference.segment import segment_iter
from napari_unet.io import atomic_write, temp_files
from napari_unet.modelfile import ModelFileError, load_model, make_config, read_config, save_model
from napari_unet.models.registry import build_model
from napari_unet.training import train_iter
from napari_unet.trainingset import TrainingSet

ROOT = Path(__file__).resolve().parents[2]
SEED = 20240607


# -- helpers ---------------------------------------------------------------------------------

def folder_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (temporary files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stray_temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def drain_with_stop_at(gen, stop: threading.Event, k: int) -> tuple[int, object, bool]:
    """Drain ``gen``, setting ``stop`` right after event ``k``. Returns (events seen after the
    stop, the return value or None, whether PredictionCancelled was raised)."""
    seen, after = 0, 0
    try:
        while True:
            next(gen)
            if stop.is_set():
                after += 1
            if seen == k:
                stop.set()
            seen += 1
    except StopIteration as done:
        return after, done.value, False
    except PredictionCancelled:
        return after, None, True


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny random 2D U-Net (features 4, 8) saved as a model file."""
    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return save_model(tmp_path_factory.mktemp("base") / "tiny.safetensors", net, make_config(net))


@pytest.fixture(scope="module")
def nuclei(nuclei_sample):
    """Two 256 x 256 crops of synthetic nuclei: [(image, labels)]."""
    image, labels = (np.asarray(a) for a in nuclei_sample[:2])
    return [(image[:256, :256], labels[:256, :256]), (image[256:, 256:], labels[256:, 256:])]


@pytest.fixture
def training_set(tmp_path, nuclei):
    ts = TrainingSet(tmp_path / "training-set")
    for i, (image, labels) in enumerate(nuclei):
        ts.add(image, labels, name=f"nuclei {i}")
    return ts


# -- cancel at random points -----------------------------------------------------------------

def test_cancel_prediction_and_segmentation_at_20_random_points(tiny_file, nuclei, one_thread):
    """Stop after a random progress event: the run ends at the next tile with PredictionCancelled,
    the model file is untouched, and the same Predictor then gives the reference result."""
    model_bytes = tiny_file.read_bytes()
    predictor = Predictor(load_model(tiny_file), device="cpu", tile_size=128)
    image = nuclei[0][0]
    stack = np.stack([nuclei[0][0][:128, :128], nuclei[1][0][:128, :128], nuclei[0][0][128:, 128:]])
    reference = predict(predictor.model, image, predictor=predictor).probabilities
    ref_labels = run_to_end(segment_iter(predictor.model, stack, predictor=predictor)).labels
    n_predict = 1 + predictor.plan(image.shape).n_tiles
    n_segment = sum(1 for _ in segment_iter(predictor.model, stack, predictor=predictor))
    assert n_predict >= 5 and n_segment >= 6  # enough places to stop at

    rng = np.random.default_rng(SEED)
    for kind, n_events in (("predict", n_predict), ("segment", n_segment)):
        points = rng.integers(0, n_events - 1, 20)  # never after the last event: nothing left to cancel
        for k in points:
            stop = threading.Event()
            gen = (predict_iter(predictor.model, image, stop=stop, predictor=predictor) if kind == "predict"
                   else segment_iter(predictor.model, stack, stop=stop, predictor=predictor))
            after, value, cancelled = drain_with_stop_at(gen, stop, int(k))
            assert cancelled and value is None, f"{kind}: stop after event {k} did not cancel"
            assert after == 0, f"{kind}: {after} more events after the stop"
    assert tiny_file.read_bytes() == model_bytes
    # the cancelled runs left nothing behind in the Predictor, and the file still loads the same net
    np.testing.assert_array_equal(predict(predictor.model, image, predictor=predictor).probabilities, reference)
    np.testing.assert_array_equal(run_to_end(segment_iter(predictor.model, stack, predictor=predictor)).labels,
                                  ref_labels)
    np.testing.assert_array_equal(predict(load_model(tiny_file), image, device="cpu", tile_size=128).probabilities,
                                  reference)


def test_cancel_training_at_20_random_points(tiny_file, training_set, one_thread):
    """train_iter stopped after random events (and at random moments inside steps): it ends at
    once, the network holds finite weights, the training set and the model file are unchanged,
    and a next run finishes."""
    ts_before = folder_digest(training_set.folder)
    model_bytes = tiny_file.read_bytes()
    triples = training_set.triples()
    train, val = triples[:1], [(triples[1][0][:128, :128], triples[1][1][:128, :128])]
    kwargs = dict(patch_size=64, batch_size=2, epochs=3, steps_per_epoch=3, seed=0, device="cpu", augment=False)
    events = []
    full = run_to_end(train_iter(load_model(tiny_file).net, train, val, **kwargs), events.append)
    assert full.stopped == "finished" and full.steps == 9 and len(events) == 9

    rng = np.random.default_rng(SEED + 1)
    for k in rng.integers(0, len(events) - 1, 20):
        net = load_model(tiny_file).net
        stop = threading.Event()
        after, result, cancelled = drain_with_stop_at(train_iter(net, train, val, stop=stop, **kwargs), stop, int(k))
        assert not cancelled and after == 0
        assert result.stopped == "stopped by user" and result.steps == events[k].step
        assert all(torch.isfinite(v.float()).all() for v in net.state_dict().values())
        # the best validation before the stop is the one loaded (or the last state without one)
        validated = [e for e in events[: k + 1] if e.validated]
        assert result.best_step == (max(validated, key=lambda e: e.val_ap).step if validated else result.steps)
    # stops from another thread, in the middle of a forward or backward pass
    for delay in rng.uniform(0.0, 0.2, 3):
        net = load_model(tiny_file).net
        stop, when = threading.Event(), []
        timer = threading.Timer(delay, lambda: (when.append(time.perf_counter()), stop.set()))
        timer.start()
        result = run_to_end(train_iter(net, train, val, stop=stop, **{**kwargs, "epochs": 1000}))
        latency = time.perf_counter() - when[0]
        timer.join()
        assert result.stopped == "stopped by user" and latency < 0.5, latency
        assert all(torch.isfinite(v.float()).all() for v in net.state_dict().values())
    assert folder_digest(training_set.folder) == ts_before
    assert tiny_file.read_bytes() == model_bytes
    again = run_to_end(train_iter(load_model(tiny_file).net, train, val, **kwargs))
    assert again.stopped == "finished" and again.steps == 9
    assert again.metrics == full.metrics  # same seed, same data: cancelled runs changed nothing shared


def test_cancel_finetune_at_random_points(tiny_file, training_set, tmp_path, one_thread):
    """finetune_iter stopped after random events: a model file exists only when a validation was
    checkpointed before the stop, it loads, nothing half-written is left, the base model and the
    training set are untouched, and a next run saves a model."""
    out = tmp_path / "models"
    ts_before = folder_digest(training_set.folder)
    base_bytes = tiny_file.read_bytes()
    settings = FinetuneSettings(minutes=None, epochs=3, steps_per_epoch=3, patch_size=64, batch_size=2,
                                device="cpu", augment=False, only_if_better=False)  # a random base: keep any
    triples = training_set.triples()
    events = []
    full = run_to_end(finetune_iter(tiny_file, triples, settings, name="full", out_dir=out), events.append)
    assert full.stopped == "finished" and full.path is not None and len([e for e in events if not e.phase]) == 1 + 9
    assert [e.phase for e in events[10:]] == ["choosing the post-processing on the held-out regions…"]
    assert events[0].step == 0 and events[0].val_metrics is not None  # the base model's score

    rng = np.random.default_rng(SEED + 2)
    points = sorted(set(int(k) for k in rng.integers(0, len(events) - 1, 10)))
    for i, k in enumerate(points):
        stop = threading.Event()
        gen = finetune_iter(tiny_file, triples, settings, name=f"cut-{i}", out_dir=out, stop=stop)
        after, result, _ = drain_with_stop_at(gen, stop, k)
        assert after == 0 and result.stopped == "stopped by user"
        checkpointed = any(e.improved for e in events[: k + 1])
        if checkpointed:
            model = load_model(result.path)
            assert model.config["provenance"]["stopped"] == "stopped by user"
            assert all(torch.isfinite(v.float()).all() for v in model.net.state_dict().values())
        else:
            assert result.path is None and not (out / f"cut-{i}.safetensors").exists()
    # a cancel while the base model is being scored: nothing saved
    stop = threading.Event()
    stop.set()
    result = run_to_end(finetune_iter(tiny_file, triples, settings, name="early", out_dir=out, stop=stop))
    assert result.path is None and result.stopped == "stopped by user" and result.steps == 0
    assert stray_temp_files(out) == []
    assert tiny_file.read_bytes() == base_bytes
    assert folder_digest(training_set.folder) == ts_before
    # the name of an existing model is refused before anything runs: it is never overwritten
    full_bytes = full.path.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        next(finetune_iter(tiny_file, triples, settings, name="full", out_dir=out))
    assert full.path.read_bytes() == full_bytes
    again = run_to_end(finetune_iter(tiny_file, triples, settings, name="again", out_dir=out))
    assert again.stopped == "finished" and load_model(again.path).config["provenance"]["steps"] == 9


# -- SIGKILL while writing -------------------------------------------------------------------

#: A writer process: imports once, then for every "go <first version> <mode>" line on stdin forks
#: a child that writes version ``first`` completely and says "written <pid>"; with mode "loop" it
#: goes on writing first + 1, first + 2, ... until the test SIGKILLs it at a random moment; with
#: mode "stall" it writes half of version first + 1 into the temporary file, says "stalled" and
#: waits to be killed: a kill in the middle of a write, every time. Model files are written the
#: way ``save_model`` writes them (``atomic_write`` of ``safetensors`` weights with the JSON config
#: as metadata) but from numpy, so that no round pays seconds of importing torch.
WRITER = textwrap.dedent("""
    import itertools, json, os, signal, sys
    kind, target = sys.argv[1], sys.argv[2]
    import numpy as np

    def stall(path):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        print("stalled", flush=True)
        while True:
            signal.pause()

    if kind == "model":
        from safetensors.numpy import save_file
        from napari_unet.io import atomic_write
        spec = json.loads(open(target + ".spec.json").read())  # {"config": ..., "shapes": {key: [shape, dtype]}}
        arrays = {key: np.zeros(shape, dtype) for key, (shape, dtype) in spec["shapes"].items()}

        def save(version, tmp, halfway):
            metadata = {"napari_unet": json.dumps(dict(spec["config"], provenance={"version": version}))}
            save_file(arrays, tmp, metadata=metadata)
            if halfway:
                stall(tmp)

        def write(version, halfway=False):
            for value in arrays.values():
                value[...] = version
            atomic_write(target, lambda tmp: save(version, tmp, halfway))
    else:
        import tifffile
        from napari_unet.trainingset import TrainingSet
        ts = TrainingSet(target, create=False)
        noise = np.random.default_rng(0).integers(1, 60000, (768, 768), dtype=np.uint16)  # slow to compress
        real_imwrite = tifffile.imwrite

        def write(version, halfway=False):
            if halfway:  # the first file of the update (the masks) stops half-written
                tifffile.imwrite = lambda path, data, **kw: (real_imwrite(path, data, **kw), stall(path))
            labels = noise.copy()
            labels[0, 0] = version
            reviewed = np.ones(labels.shape, bool)
            reviewed[0, :16] = [(version >> bit) & 1 for bit in range(16)]
            ts.update("entry", labels=labels, reviewed=reviewed)

    print("ready", flush=True)
    parent = os.getpid()
    for line in sys.stdin:
        _, first, mode = line.split()
        first = int(first)
        pid = os.fork()
        if pid == 0:
            write(first)
            print(f"written {os.getpid()}", flush=True)
            if mode == "stall":
                write(first + 1, halfway=True)
            for version in itertools.count(first + 1):
                if os.getppid() != parent:  # the test is gone: never write on forever
                    os._exit(1)
                write(version)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
""")


@contextlib.contextmanager
def writer_process(kind: str, target: Path):
    """A writer (see WRITER); yields ``kill(first_version, delay)``: ``delay`` seconds after the
    first complete write, or in the middle of the next write when ``delay`` is None."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def expect(word: str) -> str:
        line = proc.stdout.readline()
        if not line.startswith(word):
            proc.kill()
            raise AssertionError(f"writer said {line!r}: {proc.stderr.read()}")
        return line

    def kill(first: int, delay: float | None) -> None:
        proc.stdin.write(f"go {first} {'stall' if delay is None else 'loop'}\n")
        proc.stdin.flush()
        pid = int(expect("written").split()[1])
        try:
            if delay is None:
                expect("stalled")
            else:
                time.sleep(delay)
        finally:
            os.kill(pid, signal.SIGKILL)
        expect("reaped")

    try:
        expect("ready")
        yield kill
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _kill_plan(seed: int, n_random: int) -> list[float | None]:
    """Random kill delays, with a kill in the middle of a write (None) after every second one."""
    delays = [float(d) for d in np.random.default_rng(seed).uniform(0.02, 0.3, n_random)]
    plan = []
    for i, delay in enumerate(delays):
        plan.append(delay)
        if i % 2:
            plan.append(None)
    return plan


def test_sigkill_while_writing_a_model_leaves_the_old_or_the_new_file(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    target = folder / "killed.safetensors"
    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(folder))
    from napari_unet.catalog import user_models

    net = build_model("unet", features=(16, 32, 64, 128))  # 7.5 MB of float32 weights
    folder.mkdir()
    spec = {"config": make_config(net),
            "shapes": {k: [list(v.shape), str(v.numpy().dtype)] for k, v in net.state_dict().items()}}
    Path(str(target) + ".spec.json").write_text(json.dumps(spec))
    last, mid_write = 0, 0
    with writer_process("model", target) as kill:
        for delay in _kill_plan(SEED + 3, 4):
            leftovers = set(temp_files(target))
            kill(last + 1, delay)
            model = load_model(target)  # never a partial file
            version = model.config["provenance"]["version"]
            for key, value in model.net.state_dict().items():
                assert torch.all(value == version), f"{key} holds another version than the config says ({version})"
            new_leftovers = sorted(set(temp_files(target)) - leftovers)
            mid_write += bool(new_leftovers)
            if delay is None:  # killed half-way through writing last + 2: the file is still last + 1
                assert version == last + 1 and len(new_leftovers) == 1
                with pytest.raises(ModelFileError, match="corrupt|truncated"):
                    load_model(new_leftovers[0])  # and the half-written leftover is refused as a model
            else:
                assert version > last
            assert set(user_models()) == {"killed"}  # leftover temporary files are not listed as models
            last = version
    print(f"model file: {mid_write} of {len(_kill_plan(SEED + 3, 4))} kills landed in the middle of a write")
    # leftovers older than an hour are cleaned up by the next write of that file
    assert temp_files(target)
    for tmp in temp_files(target):
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    small = build_model("unet", features=(4, 8))
    save_model(target, small, make_config(small))
    assert temp_files(target) == [] and read_config(target)["arguments"]["features"] == [4, 8]


def test_sigkill_while_autosaving_a_correction_leaves_a_loadable_training_set(tmp_path):
    ts = TrainingSet(tmp_path / "set")
    image = np.random.default_rng(1).random((768, 768)).astype(np.float32)
    ts.add(image, np.ones((768, 768), np.uint16), name="entry")
    noise = np.random.default_rng(0).integers(1, 60000, (768, 768), dtype=np.uint16)
    last, mid_update = 0, 0
    with writer_process("training-set", ts.folder) as kill:
        for delay in _kill_plan(SEED + 4, 6):
            kill(last + 1, delay)
            reopened = TrainingSet(ts.folder, create=False)
            assert reopened.names() == ["entry"]
            img, labels, reviewed = reopened.load("entry")
            np.testing.assert_array_equal(img, image)
            mask_version = int(labels[0, 0])
            np.testing.assert_array_equal(labels.ravel()[1:], noise.ravel()[1:])  # the whole file, not a part
            reviewed_version = sum(int(b) << bit for bit, b in enumerate(reviewed[0, :16]))
            # the index switches masks and reviewed region over together: never one of each
            assert reviewed_version == mask_version and reviewed[1:].all()
            if delay is None:  # killed half-way through the masks of last + 2
                assert mask_version == last + 1
                assert len(list((ts.folder / "masks").glob(".entry@*.tif.*.tmp"))) >= 1
            else:
                assert mask_version > last
            mid_update += bool(stray_temp_files(ts.folder))
            last = mask_version
            files = reopened.entry("entry").files
    print(f"training set: {mid_update} of {len(_kill_plan(SEED + 4, 6))} kills landed in the middle of an update")
    for kind in ("images", "masks", "reviewed"):  # only the files the index points to (unfinished ones removed)
        assert [p.name for p in (ts.folder / kind).glob("*.tif")] == [Path(files[kind]).name]


def test_atomic_write_error_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old" * 1000))

    def half_then_fail(tmp):
        Path(tmp).write_bytes(b"new" * 500)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old" * 1000 and temp_files(target) == []
    oct_mode = target.stat().st_mode & 0o777
    assert oct_mode == 0o666 & ~_current_umask()  # normal permissions, not mkstemp's 0600


def test_a_folder_that_cannot_be_fsynced_does_not_fail_the_write(tmp_path, monkeypatch):
    """Windows cannot open a folder and some network file systems refuse to fsync one: the file
    is in place by then, so the write must succeed (it used to raise after the rename)."""
    import napari_unet.io as io

    real_open = os.open

    def no_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(io.os, "open", no_folders)
    target = tmp_path / "file.bin"
    assert atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"data")) == target
    assert target.read_bytes() == b"data" and temp_files(target) == []


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- out of memory ---------------------------------------------------------------------------

class _PretendCuda:
    """Looks like a CUDA device to the predictor, computes on the CPU."""

    type = "cuda"
    device = torch.device("cpu")
    name = "cuda:0 (pretend)"

    def autocast(self):
        return contextlib.nullcontext()

    def __str__(self):
        return self.name


def _oom_predictor(model, monkeypatch, fail_calls: set[int]):
    """A Predictor on a pretend GPU whose forward runs out of memory on the given call numbers."""
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    predictor = Predictor(model, device="cpu", tile_size=512)
    predictor.device, predictor.batch_size = _PretendCuda(), 4
    real = predictor._forward
    calls = []

    def forward(batch):
        calls.append((len(calls), predictor.device.type, batch.shape))
        if len(calls) - 1 in fail_calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(batch)

    predictor._forward = forward
    return predictor, calls


def test_out_of_gpu_memory_retries_with_smaller_tiles_then_the_cpu(tiny_file, nuclei, monkeypatch, one_thread):
    model = load_model(tiny_file)
    image = nuclei[0][0]
    predictor, calls = _oom_predictor(model, monkeypatch, {0, 1, 2})
    events = []
    prediction = run_to_end(predict_iter(model, image, predictor=predictor), events.append)
    assert prediction.warnings == [
        "Out of CUDA memory: retrying with 256 px tiles.",
        "Out of CUDA memory: retrying with 128 px tiles.",
        "Out of GPU memory even with small tiles: continuing on the CPU (slower).",
    ]
    assert [c[1] for c in calls[:4]] == ["cuda", "cuda", "cuda", "cpu"]
    assert calls[0][2][-1] > calls[1][2][-1] > calls[2][2][-1] == 128  # each retry with smaller tiles
    assert prediction.device.startswith("cpu") and prediction.tile_window == (128, 128)
    assert events[-1].done == events[-1].total and all(e.done <= e.total for e in events)
    reference = predict(model, image, device="cpu", tile_size=128).probabilities
    np.testing.assert_allclose(prediction.probabilities, reference, atol=1e-5)
    # the same through segment_iter: the warnings reach the Segmentation the widget reports from
    predictor, _ = _oom_predictor(model, monkeypatch, {0})
    seg = run_to_end(segment_iter(model, image, predictor=predictor))
    # (and the untrained test model's "unsure of the pixels" line after it)
    assert seg.prediction.warnings[0] == "Out of CUDA memory: retrying with 256 px tiles."
    assert all("is unsure of" in w for w in seg.prediction.warnings[1:])
    np.testing.assert_allclose(seg.prediction.probabilities,
                               predict(model, image, device="cpu", tile_size=256).probabilities, atol=1e-5)


def test_out_of_memory_in_the_middle_of_a_stack_redoes_only_that_plane(tiny_file, nuclei, monkeypatch, one_thread):
    model = load_model(tiny_file)
    stack = np.stack([nuclei[0][0], nuclei[1][0], nuclei[0][0][::-1]])
    predictor, calls = _oom_predictor(model, monkeypatch, {2})  # plane 3's first forward pass
    events = []
    prediction = run_to_end(predict_iter(model, stack, predictor=predictor), events.append)
    assert prediction.warnings == ["Out of CUDA memory: retrying with 256 px tiles."]
    n_tiles = predictor.plan(stack.shape[1:]).n_tiles
    assert len(calls) == 3 + -(-n_tiles // predictor.batch_size) and events[-1].done == events[-1].total
    tiled = predict(model, stack, device="cpu", tile_size=512).probabilities
    np.testing.assert_allclose(prediction.probabilities[:2], tiled[:2], atol=1e-5)
    # the redone plane with smaller tiles: the same masks up to seams
    agree = ((prediction.probabilities[2] > 0.5) == (tiled[2] > 0.5)).mean()
    assert agree > 0.99


def test_out_of_memory_on_the_cpu_says_what_to_do(tiny_file, nuclei, monkeypatch):
    model = load_model(tiny_file)
    predictor = Predictor(model, device="cpu", tile_size=128)

    def forward(batch):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    predictor._forward = forward
    with pytest.raises(MemoryError, match="smaller tile size"):
        predict(model, nuclei[0][0], predictor=predictor)


def test_out_of_memory_in_training_halves_the_batch_then_stops(tiny_file, training_set, one_thread):
    triples = training_set.triples()
    net = load_model(tiny_file).net
    real_forward, sizes = net.forward, []

    def forward(x, *args, **kwargs):
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real_forward(x, *args, **kwargs)

    net.forward = forward
    result = run_to_end(train_iter(net, triples, patch_size=64, batch_size=4, epochs=1, steps_per_epoch=3,
                                   device="cpu"))
    assert result.stopped == "finished" and result.steps == 3
    assert result.warnings == ["Out of CPU memory at step 1: continuing with batch size 2.",
                               "Out of CPU memory at step 1: continuing with batch size 1."]
    assert sizes == [4, 2, 1, 1, 1]

    def always(x, *args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    net.forward = always
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = run_to_end(train_iter(net, triples, patch_size=64, batch_size=2, epochs=1, steps_per_epoch=3,
                                   device="cpu"))
    assert result.stopped.startswith("out of CPU memory at step 1 even with batch size 1") and result.steps == 0
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])  # batch-norm statistics of the failed tries undone


# -- a loss that becomes NaN / Inf -----------------------------------------------------------

def test_nan_loss_stops_finetuning_and_keeps_the_best_checkpoint(tiny_file, training_set, tmp_path, monkeypatch,
                                                                 one_thread):
    """The loss turns NaN at step 5 (after the validation at step 3 was checkpointed): training
    stops, says why, and the saved model is the step-3 checkpoint's weights, all finite."""
    from napari_unet.training import losses

    real_from_spec = losses.SegmentationLoss.from_spec.__func__
    calls = []

    def poisoned_from_spec(cls, spec):
        loss = real_from_spec(cls, spec)

        def call(logits, target, weights=None):
            value, parts = loss(logits, target, weights)
            calls.append(1)
            return (value * float("nan") if len(calls) >= 5 else value), parts

        return call

    monkeypatch.setattr(losses.SegmentationLoss, "from_spec", classmethod(poisoned_from_spec))
    out = tmp_path / "models"
    settings = FinetuneSettings(minutes=None, epochs=4, steps_per_epoch=3, patch_size=64, batch_size=2,
                                device="cpu", augment=False, only_if_better=False)  # a random base: keep any
    checkpoints = {}

    def on_event(event):
        if event.improved:
            checkpoints[event.step] = {k: v.clone() for k, v in load_model(out / "nan.safetensors").net
                                       .state_dict().items()}

    result = run_to_end(finetune_iter(tiny_file, training_set.triples(), settings, name="nan", out_dir=out),
                        on_event)
    assert result.stopped.startswith("non-finite loss at step 5: lower the learning rate")
    assert result.stopped.endswith("the best validated model so far is kept")
    assert result.steps == 4 and list(checkpoints) == [3]
    model = load_model(result.path)
    assert model.config["provenance"]["stopped"] == result.stopped
    assert model.config["provenance"]["best_step"] == 3
    for key, value in model.net.state_dict().items():
        assert torch.isfinite(value.float()).all()
        torch.testing.assert_close(value, checkpoints[3][key])
    assert stray_temp_files(out) == []


def test_huge_learning_rate_stops_with_finite_weights(tiny_file, nuclei, one_thread):
    """A real divergence (no monkeypatch): lr 1e20 blows the loss up within a few steps."""
    net = load_model(tiny_file).net
    result = run_to_end(train_iter(net, nuclei[:1], patch_size=64, batch_size=2, lr=1e20, warmup_steps=1,
                                   epochs=1, steps_per_epoch=30, device="cpu"))
    assert result.stopped.startswith("non-finite") and "learning rate" in result.stopped
    assert result.steps < 30
    assert all(torch.isfinite(v.float()).all() for v in net.state_dict().values())


def test_nan_loss_without_validation_saves_nothing(tiny_file, tmp_path, nuclei, one_thread):
    small = [(nuclei[0][0][:96, :96], nuclei[0][1][:96, :96], None)]  # too small to hold out a strip
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=5, patch_size=64, batch_size=2,
                                device="cpu", lr=1e20, augment=False, loss="plain CE", validate=False)
    result = run_to_end(finetune_iter(tiny_file, small, settings, name="diverged", out_dir=tmp_path))
    assert result.stopped.startswith("non-finite") and result.path is None
    assert list(tmp_path.iterdir()) == []


# -- cancel latency during validation --------------------------------------------------------

def test_finetune_cancel_during_validation_returns_within_a_second(tmp_path, monkeypatch, one_thread, nuclei_sample):
    """Validation predicts a whole 512 x 512 image (one big tile) with a bundled model: a stop set
    at a random moment inside it ends finetune_iter within a second, keeping the checkpoint."""
    from napari_unet.training import validation

    image, labels = (np.asarray(a) for a in nuclei_sample[:2])
    # 4 images: the first is held out whole for validation
    triples = [(image, labels, None), (image.T, labels.T, None), (image[::-1], labels[::-1], None),
               (image[:, ::-1], labels[:, ::-1], None)]
    assert image.shape == (512, 512)
    settings = FinetuneSettings(minutes=None, epochs=5, steps_per_epoch=1, patch_size=64, batch_size=1,
                                device="cpu", augment=False, only_if_better=False)  # 1 step: keep it anyway
    real_held_out, state = validation.held_out_probabilities, {}

    def held_out(net, pairs, normalization, device, target, stop):  # every pass over the validation images
        state["calls"] = state.get("calls", 0) + 1
        if state["calls"] == state["cancel_call"]:
            state["timer"] = threading.Timer(state["delay"], lambda: (state.update(t=time.perf_counter()),
                                                                       stop.set()))
            state["timer"].start()
        return real_held_out(net, pairs, normalization, device, target, stop)

    monkeypatch.setattr(validation, "held_out_probabilities", held_out)
    latencies = []
    rng = np.random.default_rng(SEED + 5)
    # the base model's scoring (pass 1), the second validation in training (pass 3)
    for run, cancel_call in enumerate((1, 3)):
        state.clear()
        state.update(cancel_call=cancel_call, delay=float(rng.uniform(0.02, 0.2)))
        stop = threading.Event()
        gen = finetune_iter("mobile-unet", triples, settings, name=f"timing-{run}", out_dir=tmp_path, stop=stop)
        events = []
        result = run_to_end(gen, events.append)
        done = time.perf_counter()
        state["timer"].join()
        assert "t" in state and state["calls"] == cancel_call, "the stop landed outside the validation"
        latencies.append(done - state["t"])
        assert result.stopped == "stopped by user"
        if cancel_call == 1:
            assert result.path is None and result.steps == 0
        else:  # the checkpoint of the first validation is kept
            assert [e.step for e in events if e.improved] == [1]
            assert load_model(result.path).config["provenance"]["best_step"] == 1
    print("cancel latencies during validation (s):", [round(x, 3) for x in latencies])
    assert max(latencies) < 1.0, latencies


# -- model loading never runs code ---------------------------------------------------------------

def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, save in (("zip.pt", lambda p: torch.save({"state": Evil()}, p)),
                       ("raw.pkl", lambda p: p.write_bytes(__import__("pickle").dumps(Evil(), protocol=4)))):
        path = tmp_path / name
        save(path)
        with pytest.raises(ModelFileError, match="never unpickles") as info:
            load_model(path)
        assert "save_model" in str(info.value) and "weights_only=True" in str(info.value)
    renamed = tmp_path / "disguised.safetensors"
    renamed.write_bytes((tmp_path / "zip.pt").read_bytes())
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(renamed)
    assert not marker.exists()


def test_a_config_that_fails_the_schema_is_refused_before_weights_are_read(tmp_path):
    from safetensors.torch import save_file

    net = build_model("unet", features=(4, 8))
    config = make_config(net)
    for broken, message in ((dict(config, architecture="os.system"), "os.system"),
                            (dict(config, format_version=99), "format_version"),
                            ({**config, "input": {"channels": 0, "normalization": config["input"]["normalization"]}},
                             "input.channels")):
        path = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
                  metadata={"napari_unet": json.dumps(broken)})
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


# -- faults found by benchmarks/bench_faults.py ------------------------------------------------

def test_a_truncated_compressed_image_in_a_training_set_gets_a_message(training_set):
    import tifffile

    entry = training_set.entries[0]
    image_file = training_set.folder / entry.files["images"]
    image = tifffile.imread(image_file)
    tifffile.imwrite(image_file, image, compression="zlib")
    data = image_file.read_bytes()
    image_file.write_bytes(data[: len(data) * 2 // 3])  # a codec error, not an OSError, inside tifffile
    with pytest.raises(ValueError, match="cannot be read"):
        training_set.load(entry.name)
    training_set.load(training_set.entries[1].name)  # the other entry still loads


def test_an_autosave_into_a_read_only_folder_says_so_and_keeps_the_previous_pair(training_set, monkeypatch):
    import errno

    from napari_unet import trainingset

    name = training_set.entries[0].name
    before = training_set.load(name)

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(trainingset, "write_tif", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)  # Linux says "read-only" even for a file that is not there
    with pytest.raises(ValueError, match="Read-only file system. The previous version is kept"):
        training_set.update(name, labels=np.zeros_like(before[1]))
    monkeypatch.undo()
    for old, now in zip(before, TrainingSet(training_set.folder, create=False).load(name)):
        np.testing.assert_array_equal(old, now)


def test_a_disk_full_when_the_fine_tuned_model_is_saved_is_a_message_and_nothing_is_overwritten(
        tiny_file, training_set, tmp_path, monkeypatch, one_thread):
    import errno

    from napari_unet import modelfile

    previous = save_model(tmp_path / "out" / "mine.safetensors", load_model(tiny_file).net, read_config(tiny_file))
    digest = hashlib.sha256(previous.read_bytes()).hexdigest()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(modelfile, "save_model", full)
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1,
                                device="cpu", validate=False)
    with pytest.raises(ValueError, match="No space left on device. Nothing was overwritten"):
        run_to_end(finetune_iter(str(tiny_file), training_set.triples(), settings, path=previous, overwrite=True))
    assert hashlib.sha256(previous.read_bytes()).hexdigest() == digest


def test_a_disk_full_when_the_run_state_is_written_lets_training_go_on(nuclei, tmp_path, monkeypatch, one_thread):
    import errno

    from napari_unet.training import checkpoint as checkpoints

    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints, "save_checkpoint", full)
    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    result = run_to_end(train_iter(net, nuclei[:1], patch_size=64, batch_size=1, epochs=3, steps_per_epoch=1,
                                   device="cpu", checkpoint=tmp_path / "run.ckpt"))
    assert result.steps == 3 and result.stopped == "finished" and len(calls) == 1  # tried once, then not again
    assert any("No space left on device" in w and "cannot be resumed" in w for w in result.warnings)


def test_an_image_too_large_for_memory_is_refused_with_what_to_do(tiny_file):
    import dask.array as da

    huge = da.zeros((10**6, 10**6), dtype="uint16", chunks=4096)  # 1.8 TiB, never read
    with pytest.raises(ValueError, match="too large to segment in one piece.*segment_to_zarr"):
        run_to_end(segment_iter(str(tiny_file), huge, device="cpu"))
