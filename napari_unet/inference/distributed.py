"""Where block and file tasks run: local threads, or a ``dask.distributed`` cluster.

A *runner* maps a task function over argument tuples and yields the results as tasks finish:

* :class:`LocalRunner` (the default): a few threads of this process.
* :class:`DaskRunner`: the workers of a ``dask.distributed`` cluster, reached by the address of its
  scheduler (``tcp://host:8786``) or a scheduler file. Tasks carry paths and settings, never a
  model: each worker process loads a model once (:func:`cached_predictor`) and keeps it for every
  later task, and opens images and zarr stores by path itself. Paths must therefore name the same
  files on every worker (a shared file system, as on an HPC cluster).

:func:`segment_files_iter` runs a batch of files: each small file is one task that segments it
whole and writes its outputs; a file larger than one block is cut into blocks that run as tasks
(:func:`~.large.segment_to_zarr_iter`). Every file gets exactly what a local run would write.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .predictor import PredictionCancelled, Predictor, Progress, relay

# -- one model per worker process ----------------------------------------------------------------
_PREDICTORS: dict[tuple, Predictor] = {}
_LOADS = [0]
_LOCK = threading.Lock()
MAX_CACHED_MODELS = 4
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 20.0


def model_loads() -> int:
    """How many models this process has loaded through :func:`cached_predictor`."""
    return _LOADS[0]


def _worker_torch_threads() -> int | None:
    """On a dask worker: its cores shared among its task threads (None elsewhere)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    nthreads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1) or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // int(nthreads))


def cached_predictor(model: str, settings: dict, torch_threads: int | None = None) -> Predictor:
    """The :class:`Predictor` of ``model`` with ``settings`` in this process; the model file is
    loaded on first use only.

    On a cluster this runs in the worker: its first task loads the model, later tasks reuse it
    (with other tile settings too). ``torch_threads`` (or, on a dask worker, its cores divided by
    its task threads) sets PyTorch's thread count so that parallel tasks do not oversubscribe.
    """
    from ..modelfile import load_model

    if model is None:
        raise ValueError("Cluster workers need a model file or a bundled model name, not a model in memory.")
    key = (str(model), tuple(sorted((k, str(v)) for k, v in settings.items())))
    with _LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            threads = torch_threads or _worker_torch_threads()
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            loaded = next((p.model for k, p in _PREDICTORS.items() if k[0] == str(model)), None)
            if loaded is None:
                loaded = load_model(model)
                _LOADS[0] += 1
            predictor = Predictor(loaded, **settings)
            if len(_PREDICTORS) >= MAX_CACHED_MODELS:
                _PREDICTORS.pop(next(iter(_PREDICTORS)))
            _PREDICTORS[key] = predictor
    return predictor


# -- runners --------------------------------------------------------------------------------------
class LocalRunner:
    """Runs tasks on ``threads`` threads of this process (default: up to 4, one per core)."""

    local = True

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(threads or min(4, os.cpu_count() or 1)))

    def describe(self) -> str:
        return f"{self.threads} local thread(s)"

    def share(self, source):
        return source

    def map(self, fn: Callable, arglist: Sequence[tuple], stop: threading.Event | None = None) -> Iterator:
        """Yield ``fn(*args)`` for each tuple as the calls finish; stops early when ``stop`` is set."""
        if self.threads == 1:
            for args in arglist:
                if stop is not None and stop.is_set():
                    raise PredictionCancelled()
                yield fn(*args)
            return
        with ThreadPoolExecutor(self.threads) as pool:
            pending = set()
            todo = iter(arglist)
            try:
                while True:
                    # a bounded queue: results (and their memory) are consumed as they come
                    while len(pending) < 2 * self.threads:
                        args = next(todo, None)
                        if args is None:
                            break
                        pending.add(pool.submit(fn, *args))
                    if not pending:
                        return
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        if stop is not None and stop.is_set():
                            raise PredictionCancelled()
                        yield future.result()
            finally:
                for future in pending:
                    future.cancel()


@dataclass
class _Opaque:
    """Carries an object through ``client.submit`` untouched (dask would compute a dask array)."""

    value: object


@dataclass(frozen=True)
class MemmapRef:
    """A memory-mapped array by file, offset, dtype and shape: workers map it themselves."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    order: str

    def open(self) -> np.ndarray:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                         order=self.order)


class DaskRunner:
    """Runs tasks on the workers of a ``dask.distributed`` :class:`~distributed.Client`."""

    local = False

    def __init__(self, client):
        self.client = client
        self._owned = False

    @classmethod
    def connect(cls, address: str, timeout: float | None = None) -> "DaskRunner":
        """Connect to a running scheduler: ``tcp://host:port`` (or any address dask takes) or the
        path of a scheduler file (``dask scheduler --scheduler-file``). Raises ``ValueError`` saying
        how to start one when nothing answers."""
        from distributed import Client

        timeout = CONNECT_TIMEOUT if timeout is None else timeout
        try:
            if os.path.isfile(address):
                client = Client(scheduler_file=address, timeout=timeout, set_as_default=False)
            else:
                client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(f"cannot reach a dask scheduler at {address} ({exc}): start one with `dask scheduler` "
                             "and workers with `dask worker ADDRESS`, or see the README on clusters.") from None
        runner = cls(client)
        runner._owned = True
        return runner

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}) if hasattr(self.client, "scheduler_info") else {}
        return f"dask cluster {self.client.scheduler.address} ({len(workers)} worker(s))"

    def share(self, source):
        """What tasks get for an image: a path as it is, a memory map by reference, a numpy array
        sent once to every worker, anything else (dask arrays) wrapped so dask does not compute it."""
        if isinstance(source, (str, os.PathLike)):
            return str(source)
        if isinstance(source, np.memmap) and source.filename and isinstance(getattr(source, "base", None),
                                                                            __import__("mmap").mmap):
            return MemmapRef(str(source.filename), source.dtype.str, tuple(source.shape), int(source.offset),
                             "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C")
        if isinstance(source, np.ndarray):
            return self.client.scatter(np.asarray(source), broadcast=True)
        return _Opaque(source)

    def map(self, fn: Callable, arglist: Sequence[tuple], stop: threading.Event | None = None) -> Iterator:
        from distributed import as_completed

        futures = [self.client.submit(_call, fn, *args, pure=False) for args in arglist]
        try:
            for future in as_completed(futures, loop=self.client.loop):
                if stop is not None and stop.is_set():
                    raise PredictionCancelled()
                yield future.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def _call(fn, *args):
    """Run a task on a worker: unwrap what :meth:`DaskRunner.share` wrapped."""
    args = tuple(a.value if isinstance(a, _Opaque) else a.open() if isinstance(a, MemmapRef) else a for a in args)
    return fn(*args)


def make_runner(scheduler: str | None = None, threads: int | None = None):
    """A :class:`DaskRunner` connected to ``scheduler``, or a :class:`LocalRunner` when it is None."""
    return DaskRunner.connect(scheduler) if scheduler else LocalRunner(threads)


# -- batches of files -----------------------------------------------------------------------------
@dataclass
class FileJob:
    """One input file and where its outputs go (``fmt``: ``"tif"`` or ``"zarr"``)."""

    image: str
    labels: str
    probabilities: str | None = None
    fmt: str = "tif"


@dataclass
class FileResult:
    image: str
    labels: str
    n_objects: int
    warnings: list[str] = field(default_factory=list)
    pid: int = 0
    model_loads: int = 0


def _split_k(probabilities: np.ndarray, spatial_dims: int) -> np.ndarray:
    """``(*planes, K, *spatial)`` -> without the K axis when K == 1 (the zarr layout of :mod:`.large`)."""
    k_axis = probabilities.ndim - spatial_dims - 1
    return np.take(probabilities, 0, axis=k_axis) if probabilities.shape[k_axis] == 1 else probabilities


def segment_file(job: FileJob, model: str | None, settings: dict, options: dict, torch_threads: int | None = None,
                 predictor: Predictor | None = None) -> FileResult:
    """Segment one file whole and write its outputs, as ``napari-unet predict`` does locally.

    ``options``: ``channel_axis``, ``threshold``, ``min_size``, ``split_touching``, ``diameter``, and for zarr
    outputs ``block_size`` and ``label_halo``. A ``ValueError`` names the file.
    """
    predictor = predictor or cached_predictor(model, settings, torch_threads)
    try:
        return _segment_file(job, predictor, options)
    except ValueError as exc:
        raise ValueError(f"{Path(job.image).name}: {exc}") from None


def _segment_file(job: FileJob, predictor: Predictor, options: dict) -> FileResult:
    from ..io import write_tif
    from .large import segment_to_zarr
    from .lazyio import read_whole
    from .predictor import run_to_end
    from .segment import segment_iter

    from ..io import marks_rgb

    post = {k: options.get(k) for k in ("threshold", "min_size", "split_touching", "diameter")}
    # a file that says it is colour (RGB TIFF, PNG, JPEG) is read as colour, as napari and train do
    post["rgb"] = marks_rgb(job.image, options.get("channel_axis"))
    if job.fmt == "zarr":
        result = segment_to_zarr(predictor.model, job.image, job.labels, job.probabilities, predictor=predictor,
                                 runner=LocalRunner(1), channel_axis=options.get("channel_axis"),
                                 block_size=options.get("block_size"),
                                 label_halo=options.get("label_halo"), **post)
        return FileResult(job.image, job.labels, max(result.n_objects, default=0), result.warnings, os.getpid(),
                          model_loads())
    image = read_whole(job.image)
    seg = run_to_end(segment_iter(predictor.model, image, predictor=predictor,
                                  channel_axis=options.get("channel_axis"), **post))
    write_tif(job.labels, seg.labels)
    if job.probabilities:
        write_tif(job.probabilities, seg.prediction.foreground)
    return FileResult(job.image, job.labels, int(seg.labels.max()), list(seg.prediction.warnings), os.getpid(),
                      model_loads())


def segment_files_iter(model, jobs: Sequence[FileJob], runner, options: dict, settings: dict | None = None,
                       torch_threads: int | None = None, predictor: Predictor | None = None,
                       stop: threading.Event | None = None) -> Iterator[Progress | FileResult]:
    """Segment a batch of files on ``runner``; yields :class:`Progress` and one :class:`FileResult`
    per file as it is written.

    Small files (at most one block) and TIFF outputs run one task per file, in parallel; a larger
    file with a zarr output is split into blocks that run in parallel, one file after the other.
    ``model`` is a bundled name or a model file (workers load it once each); ``predictor`` (this
    process's) gives the model's geometry and runs the work when ``runner`` is local.
    """
    from .large import DEFAULT_BLOCK_2D, DEFAULT_BLOCK_3D, segment_to_zarr_iter
    from .lazyio import _check_output, _shape_probe, open_image
    from .inputs import prepare_image

    settings = settings or {}
    predictor = predictor or Predictor(model, **settings)
    lm = predictor.model
    block = options.get("block_size") or (DEFAULT_BLOCK_2D if lm.spatial_dims == 2 else DEFAULT_BLOCK_3D)
    whole, blocked = [], []
    for job in jobs:  # every input and output checked before any work
        try:
            prepared = prepare_image(_shape_probe(open_image(job.image)), lm.spatial_dims, lm.in_channels,
                                     options.get("channel_axis"))
            if job.fmt == "zarr":
                for path in (job.labels, job.probabilities):
                    if path is not None:
                        _check_output(Path(path))
        except ValueError as exc:
            raise ValueError(f"{Path(job.image).name}: {exc}") from None
        (blocked if job.fmt == "zarr" and any(n > block for n in prepared.spatial_shape) else whole).append(job)
    total, done = len(jobs), 0
    yield Progress(0, total, f"{len(jobs)} file(s) on {runner.describe()}")
    if whole:
        local = runner.local
        args = [(job, None if local else str(model), settings, options, torch_threads,
                 predictor if local else None) for job in whole]
        # locally one file at a time: the network already uses every core
        for result in (LocalRunner(1) if local else runner).map(segment_file, args, stop):
            done += 1
            yield Progress(done, total, Path(result.image).name)
            yield result
    for job in blocked:
        gen = segment_to_zarr_iter(str(model) if not runner.local else lm, job.image, job.labels, job.probabilities,
                                   predictor=predictor, runner=runner, channel_axis=options.get("channel_axis"),
                                   block_size=options.get("block_size"),
                                   label_halo=options.get("label_halo"),
                                   threshold=options.get("threshold"), min_size=options.get("min_size"),
                                   split_touching=options.get("split_touching"), torch_threads=torch_threads,
                                   diameter=options.get("diameter"),
                                   stop=stop, **settings)
        name = Path(job.image).name
        try:
            result = yield from relay(gen, lambda e: Progress(done + e.done / max(e.total, 1), total,
                                                              f"{name}: {e.message}"))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        done += 1
        yield FileResult(job.image, job.labels, max(result.n_objects, default=0), result.warnings, os.getpid(),
                         model_loads())

