"""Batches of files on a runner, and the runners under their older address.

:func:`segment_files_iter` runs a batch of files: each small file is one task that segments it
whole and writes its outputs; a file larger than one block is cut into blocks that run as tasks
(:func:`~.large.segment_to_zarr_iter`). Every file gets exactly what a local run would write.

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
                      model_loads)

__all__ = ["FileJob", "FileResult", "segment_file", "segment_files_iter", "make_runner",
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
    image: str
    labels: str
    n_objects: int
    warnings: list[str] = field(default_factory=list)
    pid: int = 0
    model_loads: int = 0


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
    from ..io import marks_rgb
    from .inputs import prepare_image
    from .lazyio import _check_output, _shape_probe, open_image

    settings = settings or {}
    predictor = predictor or Predictor(model, **settings)
    lm = predictor.model
    # the defaults are read from .large at run time, as the run itself reads them
    block = options.get("block_size") or (large.DEFAULT_BLOCK_2D if lm.spatial_dims == 2 else large.DEFAULT_BLOCK_3D)
    whole, blocked = [], []
    for job in jobs:  # every input and output checked before any work
        try:
            # a file that says it is colour (RGB TIFF, PNG) is colour here too, as in segment_file
            prepared = prepare_image(_shape_probe(open_image(job.image)), lm.spatial_dims, lm.in_channels,
                                     options.get("channel_axis"), rgb=marks_rgb(job.image, options.get("channel_axis")))
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
        gen = large.segment_to_zarr_iter(str(model) if not runner.local else lm, job.image, job.labels,
                                         job.probabilities, predictor=predictor, runner=runner,
                                         channel_axis=options.get("channel_axis"),
                                         rgb=marks_rgb(job.image, options.get("channel_axis")),
                                         block_size=options.get("block_size"), label_halo=options.get("label_halo"),
                                         threshold=options.get("threshold"), min_size=options.get("min_size"),
                                         split_touching=options.get("split_touching"), torch_threads=torch_threads,
                                         diameter=options.get("diameter"), stop=stop, **settings)
        name = Path(job.image).name
        try:
            result = yield from relay(gen, lambda e: Progress(done + e.done / max(e.total, 1), total,
                                                              f"{name}: {e.message}"))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        done += 1
        yield FileResult(job.image, job.labels, max(result.n_objects, default=0), result.warnings, os.getpid(),
                         model_loads())

