"""Images larger than memory: block-wise prediction and labelling into zarr, memory flat in image size.

A plane is cut into large *blocks* (2048² pixels by default; cores of :class:`BlockGrid`). Three
passes run over the blocks, each block an independent task (see :mod:`.distributed` for running
them on a dask cluster):

1. **predict**: read the block's core grown by a halo (the tiled predictor's context + blend,
   mirrored outside the image like a tile), normalise it with statistics of the whole plane, run
   the tiled :class:`~.predictor.Predictor` on it and write the core's probabilities to a zarr
   array. Where the network's receptive field fits in the halo this equals the single-pass
   prediction up to float rounding; otherwise it differs like tile seams do. For a model that
   resizes images (``scale != 1``) each block's window is resized on the plane's resized grid
   (:func:`~napari_unet.scaling.resize_window`), so the blocks' inputs agree where they overlap
   (no resampling seams); a network that pools still sees each window at its own phase of the
   pooling grid, and a single pass normalises the resized plane rather than the plane, so both
   differ slightly from a single pass.
2. **label**: read the probabilities of the core grown by ``label_halo`` pixels (clipped to the
   image) and post-process them with :func:`~.postprocess.probabilities_to_labels`. The labels of
   a pixel depend only on its connected foreground region, so every object whose region lies
   within ``label_halo`` of each block it touches gets exactly the single-pass result. The core
   is written with block-local ids; for each pixel pair across a seam the block reports whether
   its own view puts both pixels in one object.
3. **number**: a seam pair joins the two blocks' ids when both blocks' views agree that it lies
   inside one object (a union-find over seam pairs, as a graph's connected components); ids are
   then numbered 1..N per plane in block order and each block's core is rewritten.

Nothing of image size is held in memory: blocks, their halos and one id per object. Objects
whose foreground region spans more than ``label_halo`` pixels beyond a block (e.g. a confluent
sheet of cells) are still given one id across seams wherever both sides agree, but their
watershed split is computed from a cropped view near the seams and may differ from a single pass.

Outputs are zarr arrays: ``labels`` ``(*planes, *spatial)`` int32 and, on request,
``probabilities`` ``(*planes, [K,] *spatial)`` float32 (K only when the model has more than one
foreground class). They are written beside their final path and renamed into place at the end,
so a failed or cancelled run leaves no partial output.

This module is the driver: the generator that goes over the blocks, writes the zarr stores and
yields progress. The parts it drives: block planning (:mod:`.blockplan`: the grid, halos, sizes),
the work of one block and the numbering across seams (:mod:`.blocktasks`), where blocks run
(:mod:`.runners`: threads here or a dask cluster), reading inputs lazily and writing stores
(:mod:`.lazyio`). Batches of files: :mod:`.distributed`.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..jobs import Progress, relay, run_to_end
from ..scaling import scaled_shape
from . import quality
from .blockplan import (BlockGrid, LargePlan, block_grid, block_side, chunk_shape, label_halo as checked_label_halo,
                        needs_blocks, postprocess_settings, prediction_halo, tiles_per_plane)
from .blocktasks import STAGE_MESSAGE, label_passes, predict_block, predict_block_iter
from .blockstores import BlockStores
from .inputs import fit_normalizer, prepare_image
from .lazyio import (_check_output, _commit, _create_array, _drop_mapped_pages, _open_array, _open_source, as_lazy,
                     check_apart)
from .predictor import DEFAULT_BLEND, DEFAULT_HALO, Predictor
from .runners import LocalRunner, model_reference

# Defaults are read when a run starts (setting them on this module applies to later runs).
#: Block core side for 2D networks: 2048² float32 windows are ~17 MB, a few of them are live.
DEFAULT_BLOCK_2D = 2048
#: Block core side for 3D networks (256³ float32 = 64 MB).
DEFAULT_BLOCK_3D = 256
#: Pixels of probabilities around a block's core that post-processing sees: objects (connected
#: foreground regions) up to this size across are labelled exactly as in a single pass.
DEFAULT_LABEL_HALO = 128
#: The same for 3D blocks (a 256³ block with 32 voxels around it is 320³: 130 MB of float32).
DEFAULT_LABEL_HALO_3D = 32

__all__ = ["DEFAULT_BLOCK_2D", "DEFAULT_BLOCK_3D", "DEFAULT_LABEL_HALO", "DEFAULT_LABEL_HALO_3D", "BlockProgress",
           "LargeSegmentation", "needs_blocks", "segment_to_zarr_iter", "segment_to_zarr",
           "labels_from_probabilities_iter"]


@dataclass
class BlockProgress(Progress):
    """:class:`Progress` of :func:`segment_to_zarr_iter`, with where it stands.

    ``stage``: ``"estimate"`` (the object size is estimated first), ``"start"``, ``"predict"``, ``"label"`` (the block's labels are written with
    block-local ids) or ``"number"`` (the block has its final ids). ``region``: the index
    (plane indices, then spatial slices) of the block just written, or None. ``labels_path``: the
    store being written when the run writes in place (no ``labels_path`` given), so that a viewer
    can show it as a layer while it fills, refreshing ``region`` after each event; else None.
    """

    stage: str = ""
    region: tuple | None = None
    labels_path: str | None = None


@dataclass
class LargeSegmentation:
    """Result of :func:`segment_to_zarr_iter`.

    ``labels``: zarr array ``(*planes, *spatial)`` int32 (ids 1..N per plane, 0 = background);
    ``probabilities``: zarr array ``(*planes, [K,] *spatial)`` float32 or None when not kept.
    """

    labels: object
    probabilities: object | None
    labels_path: Path
    probabilities_path: Path | None
    n_objects: list[int]
    target: str
    device: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    n_blocks: int = 0
    model_loads: dict[int, int] = field(default_factory=dict)  # worker pid -> models it loaded
    size_estimate: object = None  # the object size estimated first (napari_unet.inference.estimate)


def _model_reference(model) -> str | None:
    """What workers load: a bundled name, or a model file's absolute path (None: only in memory)."""
    if isinstance(model, (str, os.PathLike)):
        return model_reference(model)
    path = getattr(model, "path", None)
    return None if path is None else model_reference(path)


def _label_halo(value: int | None, spatial_dims: int) -> int:
    return checked_label_halo(value, DEFAULT_LABEL_HALO if spatial_dims == 2 else DEFAULT_LABEL_HALO_3D)


def _block_side(value, spatial_dims: int, align: Sequence[int]) -> tuple[int, ...]:
    return block_side(value, spatial_dims, align, DEFAULT_BLOCK_2D if spatial_dims == 2 else DEFAULT_BLOCK_3D)


# -- the driver -----------------------------------------------------------------------------------
def _open_input(image, lm, channel_axis: int | None, rgb: bool):
    """``(source, data, lazy, prepared)``: what tasks get for the image (its path, or the array),
    the array opened, read lazily, and its planes arranged and checked (reading no pixels)."""
    source = str(image) if isinstance(image, (str, os.PathLike)) else image
    data = _open_source(source)
    lazy = as_lazy(data)
    if isinstance(lazy, np.ndarray) and (channel_axis is not None or rgb):
        import dask.array as da  # a colour image turns grey lazily, never whole

        lazy = da.from_array(lazy, chunks="auto", name=False)
    return source, data, lazy, prepare_image(lazy, lm.spatial_dims, lm.in_channels, channel_axis, rgb)


def _chunk_warnings(data) -> list[str]:
    chunks = getattr(as_lazy(data), "chunksize", None)  # a zarr or dask input's own chunks
    if chunks is not None and np.prod(chunks, dtype=np.float64) > 16 * DEFAULT_BLOCK_2D ** 2:
        return [f"The image is stored in chunks of {tuple(chunks)}: every block reads whole chunks, so "
                "memory grows with them. Rechunk it (e.g. zarr chunks of 1024 px) for flat memory."]
    return []


def _block_geometry(lm, predictor: Predictor, spatial: tuple[int, ...], scale: float, block_size,
                    label_halo: int | None) -> tuple[BlockGrid, int, int]:
    """The block grid, the prediction halo and the label halo of a run, in image pixels."""
    if label_halo is None and scale < 1:  # objects are 1 / scale times larger than the network's in image pixels
        label_halo = int(math.ceil(_label_halo(None, lm.spatial_dims) / scale))
    label_halo = _label_halo(label_halo, lm.spatial_dims)
    align = tuple(int(a) for a in lm.net.size_divisor)
    grid = block_grid(spatial, _block_side(block_size, lm.spatial_dims, align), align)
    # the halo must cover what a tile sees around its core, on the same pooling grid as a single pass
    return grid, prediction_halo(predictor.context + predictor.blend, scale, align), label_halo


def _fit_normalizers(prepared, data, normalization: dict, warnings: list[str]) -> list:
    """One normaliser per plane, with the statistics of the whole plane."""
    import dask

    normalizers = []
    with dask.config.set(scheduler="threads"):  # never the cluster's (this may run in a worker's task)
        for p in range(prepared.n_planes):
            normalizers.append(fit_normalizer(prepared.plane(p), normalization, warnings))
            _drop_mapped_pages(data)
    return normalizers


class _Events:
    """The :class:`BlockProgress` events of one run; ``done`` counts the units done so far."""

    def __init__(self, plan: LargePlan, total: int, live: str | None):
        self.plan, self.total, self.live, self.done = plan, total, live, 0

    def __call__(self, stage: str, plane: int = 0, block=None, message: str = "") -> BlockProgress:
        region = None if block is None else self.plan.plane_index(plane) + self.plan.grid.core(block)
        return BlockProgress(self.done, self.total, message, plane, self.plan.n_planes, stage, region, self.live)


def _prediction_units(plan: LargePlan, predictor: Predictor, runner) -> int:
    """Progress units of pass 1: tiles of every block when predicting here, else blocks."""
    if not runner.local:
        return len(plan.jobs())

    def n_tiles(shape):
        return predictor.plan(scaled_shape(shape, plan.scale) if plan.scale != 1 else shape).n_tiles

    return plan.n_planes * tiles_per_plane(plan.grid, plan.halo, n_tiles)


def _predict_pass(plan: LargePlan, source, normalizers: list, predictor: Predictor, runner, stop, warnings: list,
                  model_loads: dict, events: _Events) -> Iterator[BlockProgress]:
    """Pass 1: probabilities of every block, here tile by tile, or as tasks of ``runner``."""
    jobs = plan.jobs()
    if runner.local:
        for i, (p, b) in enumerate(jobs):
            for n in predict_block_iter(plan, source, p, b, normalizers[p], predictor, stop, warnings):
                events.done += n
                yield events("predict", p, None, f"block {i + 1}/{len(jobs)}")
        return
    shared = runner.share(source)
    for result in runner.map(predict_block, [(plan, shared, p, b, normalizers[p]) for p, b in jobs], stop):
        model_loads[result["pid"]] = result["model_loads"]
        warnings.extend(w for w in result["warnings"] if w not in warnings)
        events.done += 1
        yield events("predict", 0, None, f"block {events.done}/{len(jobs)}")


def _run_passes(plan: LargePlan, source, data, prepared, lm, predictor: Predictor, runner, where: str, stop,
                warnings: list, live: str | None):
    """Passes 1 to 3 over every block of ``plan``; yields :class:`BlockProgress`, returns the
    number of objects per plane and the models each worker process loaded."""
    n_jobs = len(plan.jobs())
    events = _Events(plan, _prediction_units(plan, predictor, runner) + 2 * n_jobs, live)
    yield events("start", message=f"predicting {plan.grid.n_blocks} block(s) on {where}")
    normalizers = _fit_normalizers(prepared, data, lm.normalization, warnings)
    model_loads: dict[int, int] = {}
    yield from _predict_pass(plan, source, normalizers, predictor, runner, stop, warnings, model_loads, events)

    def labelled(step):  # passes 2 and 3: labels per block, then one id per object across seams
        events.done += 1
        return events(*step, STAGE_MESSAGE[step[0]])

    block_counts: list = []
    counts = yield from relay(label_passes(plan, plan.jobs(), runner, stop, block_counts), labelled)
    message = quality.warning(sum(block_counts, quality.ResultCounts()), int(sum(counts)), lm.name)
    if message:  # implausible (noise, a blank slide, a wrong model): said in one line, not refused
        warnings.append(message)
    return counts, model_loads


def segment_to_zarr_iter(model, image, labels_path: str | os.PathLike | None = None,
                         probabilities_path: str | os.PathLike | None = None, *, channel_axis: int | None = None,
                         rgb: bool = False, block_size: int | Sequence[int] | None = None,
                         label_halo: int | None = None, threshold: float | None = None,
                         min_size: int | None = None, split_touching: bool | None = None, device: str = "auto",
                         tile_size: int | str = "auto", halo: int = DEFAULT_HALO, blend: int = DEFAULT_BLEND,
                         batch_size: int | str = "auto", predictor: Predictor | None = None, runner=None,
                         torch_threads: int | None = None, diameter: float | None = None,
                         stop: threading.Event | None = None) -> Iterator[Progress]:
    """Segment an image of any size into zarr, block by block; yields :class:`BlockProgress`,
    returns a :class:`LargeSegmentation`.

    Args:
        model: a bundled model name, a model file, or a :class:`~napari_unet.modelfile.LoadedModel`
            (a cluster needs a name or a file: each worker loads it once).
        image: a path (zarr, TIFF, NPY: opened lazily, see :func:`open_image`) or an array (numpy,
            memory-mapped, dask or zarr): a 2D image or a stack of planes for a 2D network, a volume
            for a 3D network.
        labels_path: the ``.zarr`` store for the labels; None writes one in place in a new temporary
            folder (for a viewer: see :class:`BlockProgress`; the folder is the caller's to remove).
        probabilities_path: where to keep the probabilities (``.zarr``); None discards them. Neither
            may be the input's own path, lie inside it or hold it (``ValueError`` before any work).
        block_size: block core side in pixels (default 2048 for 2D networks, 256 for 3D), rounded
            up to the network's pooling factor.
        label_halo: pixels around a block that post-processing sees; objects up to that size across
            are labelled exactly as in a single pass (see the module's notes). Default 128 for 2D
            networks, 32 for 3D; grown by ``1 / scale`` for a model that shrinks images.
        diameter: the objects' diameter in pixels (None: the model's own), for a model that
            declares the diameter it works at: blocks are resized by their ratio for the network.
            ``"auto"`` (and None for a model that estimates sizes) estimates it first on a central
            crop of the middle plane (:mod:`.estimate`).
        runner: where blocks run: None (this process; prediction in this thread with tile-level
            progress, labelling on a few threads), or one from :mod:`.runners`.
        torch_threads: PyTorch threads on cluster workers (None: the worker's cores / its threads).
        stop: set it to cancel between tiles or blocks (raises :class:`PredictionCancelled`).

    Other arguments are those of :func:`~.segment.segment_iter` / :class:`~.predictor.Predictor`.
    Peak memory depends on the block size, not on the image size.
    """
    from .segment import resolve_diameter  # "auto": estimated on a central crop of the middle plane

    start = time.perf_counter()
    runner = runner or LocalRunner()
    settings = {"device": device, "tile_size": tile_size, "halo": halo, "blend": blend, "batch_size": batch_size}
    if predictor is None:
        predictor = Predictor(model, **settings)
    lm = predictor.model
    model_ref = _model_reference(model) or _model_reference(lm)
    if not runner.local and model_ref is None:
        raise ValueError("A model held only in memory cannot be sent to cluster workers: save it to a model file "
                         "(napari_unet.modelfile.save_model) and pass that path.")
    source, data, lazy, prepared = _open_input(image, lm, channel_axis, rgb)  # checks axes and channels first
    warnings = list(prepared.warnings)
    post = postprocess_settings(lm.postprocess, threshold, min_size, split_touching)
    # the outputs are checked before the size estimate (model passes): a refused path fails at once
    stores = BlockStores.prepare(labels_path, probabilities_path, source)
    finished = False
    try:  # from here on a failure removes what prepare made (the temporary folder of an in-place run)
        diameter, size_estimate = yield from relay(
            resolve_diameter(lazy, diameter, predictor=predictor, stop=stop, channel_axis=channel_axis, rgb=rgb),
            lambda p: BlockProgress(p.done, p.total, p.message, stage="estimate"))
        scale = lm.scale(diameter)
        grid, pred_halo, label_halo = _block_geometry(lm, predictor, prepared.spatial_shape, scale, block_size,
                                                      label_halo)
        warnings += _chunk_warnings(data)
        plan = LargePlan(prepared.plane_shape, grid, lm.spatial_dims, lm.in_channels, max(1, lm.net.out_channels - 1),
                         lm.target, channel_axis, rgb, pred_halo, int(label_halo), str(stores.tmp_probs),
                         str(stores.tmp_labels), post, model_ref, settings, torch_threads, scale)
        attrs = {"napari_unet": {"model": lm.name, "target": lm.target, "classes": lm.classes[1:], **post,
                                 "block_size": list(grid.block), "label_halo": label_halo, "scale": scale}}
        stores.create(plan, attrs)
        where = str(predictor.device) if runner.local else runner.describe()
        live = str(stores.tmp_labels) if stores.in_place else None
        counts, model_loads = yield from _run_passes(plan, source, data, prepared, lm, predictor, runner, where,
                                                     stop, warnings, live)
        stores.commit()
        finished = True
    finally:
        stores.clean_up(finished)
    keep_probs = stores.probabilities_path is not None
    return LargeSegmentation(
        labels=_open_array(stores.labels_path, "r+"),
        probabilities=_open_array(stores.probabilities_path, "r") if keep_probs else None,
        labels_path=stores.labels_path, probabilities_path=stores.probabilities_path,
        n_objects=counts, target=lm.target, device=where, warnings=warnings,
        seconds=time.perf_counter() - start, n_blocks=grid.n_blocks, model_loads=model_loads,
        size_estimate=size_estimate)


def segment_to_zarr(model, image, labels_path=None, probabilities_path=None, **kwargs) -> LargeSegmentation:
    """Blocking form of :func:`segment_to_zarr_iter`."""
    return run_to_end(segment_to_zarr_iter(model, image, labels_path, probabilities_path, **kwargs))


# -- labels from stored probabilities -------------------------------------------------------------
def labels_from_probabilities_iter(probabilities: str | os.PathLike, labels_path: str | os.PathLike, *,
                                   target: str | None = None, spatial_dims: int | None = None,
                                   threshold: float = 0.5,
                                   min_size: int = 16, split_touching: bool = True, split_depth: float | None = None,
                                   block_size: int | Sequence[int] | None = None,
                                   label_halo: int | None = None, runner=None,
                                   stop: threading.Event | None = None) -> Iterator[Progress]:
    """Instance labels from stored probabilities, block by block (passes 2 and 3 only); yields
    :class:`Progress`, returns the number of objects per plane.

    ``probabilities`` is a zarr store laid out as :func:`segment_to_zarr_iter` writes it:
    ``(*planes, *spatial)`` for binary targets, ``(*planes, 2, *spatial)`` for boundary targets
    (``target`` defaults to the one recorded in the store). Use it to try other post-processing
    settings on a large image without predicting again. ``min_size`` counts network pixels, as
    in the model file (the scale the store records, see :mod:`napari_unet.scaling`), and so does
    ``split_depth``, which defaults to the one the store records (the model's), else 1.
    ``spatial_dims`` and ``label_halo`` default to what the store records (the run's block's
    axes and its label halo, grown by ``1 / scale`` where the model resized the image), else 2
    and 128 (32 for 3D). ``labels_path`` must not be ``probabilities`` nor lie inside it.
    """
    runner = runner or LocalRunner()
    probabilities = Path(probabilities)
    labels_path = Path(labels_path)
    _check_output(labels_path)
    check_apart(labels_path, probabilities)
    array = _open_array(probabilities, "r")
    recorded = dict(array.attrs).get("napari_unet", {})
    target = target or recorded.get("target", "binary")
    spatial_dims = spatial_dims or len(recorded.get("block_size") or (0, 0))
    label_halo = recorded.get("label_halo") if label_halo is None else label_halo
    if target not in ("binary", "boundary"):
        raise ValueError(f"Unknown target {target!r}: choose 'binary' or 'boundary'.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    n_out = 2 if target == "boundary" else 1
    n_lead = array.ndim - spatial_dims - (1 if n_out > 1 else 0)
    if n_lead < 0 or (n_out > 1 and array.shape[n_lead] != n_out):
        raise ValueError(f"{probabilities}: shape {tuple(array.shape)} is not (*planes, {'2, ' if n_out > 1 else ''}"
                         f"{', '.join('*' * spatial_dims)}) for a {target} target.")
    planes, spatial = tuple(array.shape[:n_lead]), tuple(array.shape[-spatial_dims:])
    label_halo = _label_halo(label_halo, spatial_dims)
    ones = (1,) * spatial_dims
    grid = block_grid(spatial, _block_side(block_size, spatial_dims, ones), ones)
    tmp = labels_path.with_name(f".{labels_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    post = {"threshold": threshold, "min_size": min_size, "split_touching": split_touching,
            "split_depth": float(recorded.get("split_depth", 1.0) if split_depth is None else split_depth)}
    try:
        _create_array(tmp, planes + spatial, (1,) * len(planes) + chunk_shape(grid.block, spatial_dims), np.int32,
                      {"napari_unet": {**recorded, "target": target, **post, "label_halo": label_halo}})
        plan = LargePlan(planes, grid, spatial_dims, 1, n_out, target, None, False, 0, int(label_halo),
                         str(probabilities), str(tmp), post, None, scale=float(recorded.get("scale", 1.0)))
        jobs = plan.jobs()
        total, done = 2 * len(jobs), 0

        def labelled(step):
            nonlocal done
            done += 1
            return Progress(done, total, STAGE_MESSAGE[step[0]], step[1], plan.n_planes)

        counts = yield from relay(label_passes(plan, jobs, runner, stop), labelled)
        _commit(tmp, labels_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
