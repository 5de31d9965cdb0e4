"""Batches of files on a runner, and the runners under their older address.

:func:`segment_files_iter` runs a batch of files: each small file is one task that segments it
whole and writes its outputs; a file larger than one block is cut into blocks that run as tasks
(:func:`~.large.segment_to_zarr_iter`). Every file gets exactly what a local run would write; a
file that fails is reported (:class:`FileError`) and the others go on.

Where tasks run, :class:`LocalRunner` (threads of this process) or :class:`DaskRunner` (the
workers of a ``dask.distributed`` cluster, each loading a model once: :func:`cached_predictor`),
lives in :mod:`.runners`; the names stay importable from here, and :func:`make_runner` picks one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..jobs import Progress, relay, run_to_end
from . import large
from .predictor import Predictor
from .runners import (CONNECT_TIMEOUT, DaskRunner, LocalRunner, MemmapRef, cached_predictor,
                      model_loads, model_reference)

__all__ = ["FileJob", "FileResult", "FileError", "segment_file", "segment_files_iter", "make_runner",
           # from .runners
           "CONNECT_TIMEOUT", "DaskRunner", "LocalRunner", "MemmapRef", "cached_predictor",
           "model_loads"]


def make_runner(scheduler: str | None = None, threads: int | None = None):
    """A :class:`DaskRunner` connected to ``scheduler``, or a :class:`LocalRunner` when it is None."""
    # CONNECT_TIMEOUT is read from this module when called: setting it here applies (as it always did)
    return DaskRunner.connect(scheduler, CONNECT_TIMEOUT) if scheduler else LocalRunner(threads)


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
    """A file segmented and written; ``size_estimate``: what the object size estimate found (its
    :meth:`~.estimate.SizeEstimate.describe`), None when no size was estimated."""

    image: str
    labels: str
    n_objects: int
    warnings: list[str] = field(default_factory=list)
    pid: int = 0
    model_loads: int = 0
    size_estimate: str | None = None


@dataclass
class FileError:
    """A file of a batch that was not segmented; ``message`` (one line) names it and says why."""

    image: str
    message: str


class _FileShare:
    """How much of a block-wise file is done, from its :class:`~.large.BlockProgress` events: the
    object-size estimate (stage ``"estimate"``) counts for ``ESTIMATE`` of the file, the blocks for
    the rest, so the file's progress never goes back when its blocks start."""

    ESTIMATE = 0.05

    def __init__(self):
        self.estimated = False

    def __call__(self, event) -> float:
        fraction = event.done / max(event.total, 1)
        if getattr(event, "stage", "") == "estimate":
            self.estimated = True
            return self.ESTIMATE * fraction
        return self.ESTIMATE + (1 - self.ESTIMATE) * fraction if self.estimated else fraction


def _described(estimate) -> str | None:
    return None if estimate is None else estimate.describe()


def _error(job: FileJob, exc: Exception) -> FileError:
    """What went wrong with one file, as one line that names it."""
    name = Path(job.image).name
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return FileError(job.image, f"{name}: {exc.strerror or exc}{where}")
    text = str(exc)
    return FileError(job.image, text if text.startswith(f"{name}: ") else f"{name}: {text}")


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


def _file_task(job: FileJob, *args) -> FileResult | FileError:
    """:func:`segment_file` as a task of a batch: a file that cannot be read or written is its own
    :class:`FileError` (also from a worker), not the end of the batch."""
    try:
        return segment_file(job, *args)
    except (ValueError, OSError) as exc:
        return _error(job, exc)


def _segment_file(job: FileJob, predictor: Predictor, options: dict) -> FileResult:
    from ..io import marks_rgb, write_tif
    from .lazyio import read_whole
    from .segment import segment_iter

    post = {k: options.get(k) for k in ("threshold", "min_size", "split_touching", "diameter")}
    # a file that says it is colour (RGB TIFF, PNG, JPEG) is read as colour, as napari and train do
    post["rgb"] = marks_rgb(job.image, options.get("channel_axis"))
    if job.fmt == "zarr":
        result = large.segment_to_zarr(predictor.model, job.image, job.labels, job.probabilities, predictor=predictor,
                                       runner=LocalRunner(1), channel_axis=options.get("channel_axis"),
                                       block_size=options.get("block_size"),
                                       label_halo=options.get("label_halo"), **post)
        return FileResult(job.image, job.labels, max(result.n_objects, default=0), result.warnings, os.getpid(),
                          model_loads(), _described(result.size_estimate))
    image = read_whole(job.image)
    seg = run_to_end(segment_iter(predictor.model, image, predictor=predictor,
                                  channel_axis=options.get("channel_axis"), **post))
    write_tif(job.labels, seg.labels)
    if job.probabilities:
        write_tif(job.probabilities, seg.prediction.foreground)
    return FileResult(job.image, job.labels, int(seg.labels.max()), list(seg.prediction.warnings), os.getpid(),
                      model_loads(), _described(seg.size_estimate))


def _needs_blocks(job: FileJob, lm, options: dict, block: int) -> bool:
    """Check one job before any work (its input readable, its outputs writable and apart from
    it; ``ValueError`` otherwise) and say whether it is cut into blocks (a zarr output larger
    than one block)."""
    from ..io import marks_rgb
    from .inputs import prepare_image
    from .lazyio import _check_output, _shape_probe, check_apart, open_image

    # a file that says it is colour (RGB TIFF, PNG) is colour here too, as in segment_file
    prepared = prepare_image(_shape_probe(open_image(job.image)), lm.spatial_dims, lm.in_channels,
                             options.get("channel_axis"), rgb=marks_rgb(job.image, options.get("channel_axis")))
    for path in (job.labels, job.probabilities):
        if path is not None:
            if job.fmt == "zarr":
                _check_output(Path(path))
            check_apart(Path(path), job.image)
    return job.fmt == "zarr" and any(n > block for n in prepared.spatial_shape)


def segment_files_iter(model, jobs: Sequence[FileJob], runner, options: dict, settings: dict | None = None,
                       torch_threads: int | None = None, predictor: Predictor | None = None,
                       stop: threading.Event | None = None) -> Iterator[Progress | FileResult | FileError]:
    """Segment a batch of files on ``runner``; yields :class:`Progress` and, per file, a
    :class:`FileResult` as it is written or a :class:`FileError` (an unreadable input, an output
    that cannot be written, a ``ValueError`` or ``OSError`` in its task): every other file is
    still segmented.

    Small files (at most one block) and TIFF outputs run one task per file, in parallel; a larger
    file with a zarr output is split into blocks that run in parallel, one file after the other.
    ``model`` is a bundled name or a model file (workers load it once each, a file by its absolute
    path); ``predictor`` (this process's) gives the model's geometry and runs the work when
    ``runner`` is local.
    """
    from ..io import marks_rgb

    settings = settings or {}
    predictor = predictor or Predictor(model, **settings)
    lm = predictor.model
    reference = None if runner.local else model_reference(model)
    # the defaults are read from .large at run time, as the run itself reads them
    block = options.get("block_size") or (large.DEFAULT_BLOCK_2D if lm.spatial_dims == 2 else large.DEFAULT_BLOCK_3D)
    errors, whole, blocked = [], [], []
    for job in jobs:  # every input and output checked before any work
        try:
            (blocked if _needs_blocks(job, lm, options, block) else whole).append(job)
        except ValueError as exc:
            errors.append(_error(job, exc))
    total, done = len(jobs), len(errors)
    yield Progress(done, total, f"{len(jobs)} file(s) on {runner.describe()}")
    yield from errors
    if whole:
        local = runner.local
        args = [(job, reference, settings, options, torch_threads, predictor if local else None) for job in whole]
        # locally one file at a time: the network already uses every core
        for result in (LocalRunner(1) if local else runner).map(_file_task, args, stop):
            done += 1
            yield Progress(done, total, Path(result.image).name)
            yield result
    for job in blocked:
        gen = large.segment_to_zarr_iter(reference or lm, job.image, job.labels,
                                         job.probabilities, predictor=predictor, runner=runner,
                                         channel_axis=options.get("channel_axis"),
                                         rgb=marks_rgb(job.image, options.get("channel_axis")),
                                         block_size=options.get("block_size"), label_halo=options.get("label_halo"),
                                         threshold=options.get("threshold"), min_size=options.get("min_size"),
                                         split_touching=options.get("split_touching"), torch_threads=torch_threads,
                                         diameter=options.get("diameter"), stop=stop, **settings)
        name, of_file = Path(job.image).name, _FileShare()
        try:
            result = yield from relay(gen, lambda e: Progress(done + of_file(e), total, f"{name}: {e.message}"))
        except (ValueError, OSError) as exc:
            done += 1
            yield _error(job, exc)
            continue
        done += 1
        yield FileResult(job.image, job.labels, max(result.n_objects, default=0), result.warnings, os.getpid(),
                         model_loads(), _described(result.size_estimate))
