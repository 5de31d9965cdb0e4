"""Where block and file tasks run: threads of this process, or the workers of a dask cluster.

A *runner* maps a task function over argument tuples and yields the results as tasks finish;
``runner.local`` says whether they run in this process (the driver then runs prediction itself,
with tile-level progress) and ``runner.share(source)`` says what a task gets for the input image.

* :class:`LocalRunner` (the default): a few threads of this process.
* :class:`DaskRunner`: the workers of a ``dask.distributed`` cluster, reached by the address of its
  scheduler (``tcp://host:8786``) or a scheduler file. Tasks carry paths and settings, never a
  model: each worker process loads a model once (:func:`cached_predictor`) and keeps it for every
  later task, and opens images and zarr stores by path itself. Paths must therefore name the same
  files on every worker (a shared file system, as on an HPC cluster).

What runs on them: the tasks of one block (:mod:`.blocktasks`), driven by :mod:`.large`, and whole
files (:mod:`.distributed`). This module imports neither of them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..jobs import raise_if_stopped
from .predictor import Predictor
from .predictor_cache import PredictorCache, PredictorSettings

# -- one model per worker process ----------------------------------------------------------------
#: The predictors of this process (a worker's, on a cluster), keyed by their settings.
_CACHE = PredictorCache()
_LOCK = threading.Lock()
MAX_CACHED_MODELS = 4
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 20.0


def model_loads() -> int:
    """How many models this process has loaded through :func:`cached_predictor`."""
    return _CACHE.loads


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


def model_reference(model) -> str:
    """``model`` as every worker finds it: a bundled model's name as it is, a model file by its
    absolute path (a relative one would be looked for in each worker's own working folder)."""
    from ..catalog import known_models

    text = str(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if text not in known_models() and path.exists() else text


def _file_stamp(model: str) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, size)`` of the model's file; None when it has none (the loader then
    says what is wrong). A file rewritten in place, or replaced by an atomic rename (a new
    inode, whatever its time), gets another stamp."""
    from ..catalog import resolve_model_path

    try:
        st = os.stat(resolve_model_path(model))
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def cached_predictor(model: str, settings: dict | PredictorSettings, torch_threads: int | None = None) -> Predictor:
    """The :class:`Predictor` of ``model`` with ``settings`` (a dict of its arguments, or the
    :class:`PredictorSettings` themselves) in this process; the model file is loaded on first use only.

    On a cluster this runs in the worker: its first task loads the model, later tasks reuse it
    (with other tile settings too) as long as the file is the same: the cache key carries the
    file's stamp (:func:`_file_stamp`, in the settings' ``modified`` field), so a model saved
    again at the same path (``train -o m --overwrite``) is loaded again by a long-lived worker.
    ``torch_threads`` (or, on a dask worker, its cores divided by its task threads) sets
    PyTorch's thread count so that parallel tasks do not oversubscribe.
    """
    if model is None:
        raise ValueError("Cluster workers need a model file or a bundled model name, not a model in memory.")
    key = settings if isinstance(settings, PredictorSettings) else PredictorSettings.of(model, settings)
    key = replace(key, modified=_file_stamp(key.model))
    with _LOCK:
        if key not in _CACHE:
            threads = torch_threads or _worker_torch_threads()
            if threads:
                import torch

                torch.set_num_threads(int(threads))
        _CACHE.capacity = MAX_CACHED_MODELS  # read at each call, as the module constant may be changed
        return _CACHE.get(key)


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
                raise_if_stopped(stop)
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
                        raise_if_stopped(stop)
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
        address = os.path.expanduser(address)  # a scheduler file as ~/dask.json (the shell leaves --scheduler=~/...)
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
                raise_if_stopped(stop)
                yield future.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def _call(fn, *args):
    """Run a task on a worker: unwrap what :meth:`DaskRunner.share` wrapped."""
    args = tuple(a.value if isinstance(a, _Opaque) else a.open() if isinstance(a, MemmapRef) else a for a in args)
    return fn(*args)
