"""Images larger than memory: block-wise prediction and labelling into zarr, memory flat in image size.

A plane is cut into large *blocks* (2048² pixels by default; cores of :class:`BlockGrid`). Three
passes run over the blocks, each block an independent task (see :mod:`.distributed` for running
them on a dask cluster):

1. **predict**: read the block's core grown by a halo (the tiled predictor's context + blend,
   mirrored outside the image like a tile), normalise it with statistics of the whole plane, run
   the tiled :class:`~.predictor.Predictor` on it and write the core's probabilities to a zarr
   array. Where the network's receptive field fits in the halo this equals the single-pass
   prediction up to float rounding; otherwise it differs like tile seams do.
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
so a failed or cancelled run leaves no partial output. Reading inputs lazily and writing stores:
:mod:`.lazyio`.
"""

from __future__ import annotations

import itertools
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

from ..scaling import resize_image, scaled_shape
from .inputs import Normalizer, fit_normalizer, prepare_image
from . import quality
from .postprocess import probabilities_to_labels
from .predictor import DEFAULT_BLEND, DEFAULT_HALO, Predictor, Progress, relay, run_to_end
from .lazyio import (MAX_CHUNK_2D, MAX_CHUNK_3D, SourcePlane, _check_output, _commit, _create_array,
                     _drop_mapped_pages, _is_zarr_array, _open_array, _open_source, as_lazy)
from .tiling import read_window

#: Block core side for 2D networks: 2048² float32 windows are ~17 MB, a few of them are live.
DEFAULT_BLOCK_2D = 2048
#: Block core side for 3D networks (256³ float32 = 64 MB).
DEFAULT_BLOCK_3D = 256
#: Pixels of probabilities around a block's core that post-processing sees: objects (connected
#: foreground regions) up to this size across are labelled exactly as in a single pass.
DEFAULT_LABEL_HALO = 128
#: The same for 3D blocks (a 256³ block with 32 voxels around it is 320³: 130 MB of float32).
DEFAULT_LABEL_HALO_3D = 32


# -- geometry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockGrid:
    """Blocks of a ``shape`` (spatial, pixels) image: cores of ``block`` pixels per axis (the last
    ones clipped to the image)."""

    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.counts)

    def indices(self) -> list[tuple[int, ...]]:
        """Block indices in raster order."""
        return list(itertools.product(*(range(c) for c in self.counts)))

    def linear(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.counts))

    def core(self, index: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, self.block, self.shape))

    def neighbour(self, index: Sequence[int], axis: int, side: int) -> tuple[int, ...] | None:
        """The block next to ``index`` along ``axis`` (``side`` -1 or +1), or None at the image edge."""
        j = index[axis] + side
        if not 0 <= j < self.counts[axis]:
            return None
        return tuple(j if a == axis else i for a, i in enumerate(index))


def chunk_shape(block: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Zarr chunk sides that divide the block sides (so that blocks never share a chunk)."""
    cap = MAX_CHUNK_2D if spatial_dims == 2 else MAX_CHUNK_3D
    sides = []
    for b in block:
        c = int(b)
        while c > cap and c % 2 == 0:
            c //= 2
        sides.append(c)
    return tuple(sides)


# -- the work of one block ----------------------------------------------------------------------
@dataclass
class LargePlan:
    """Everything a block task needs (small and picklable: paths and settings, no pixels)."""

    plane_shape: tuple[int, ...]
    grid: BlockGrid
    spatial_dims: int
    in_channels: int
    n_out: int  # K, probability channels (classes but the background)
    target: str
    channel_axis: int | None
    rgb: bool
    halo: int  # prediction halo around a block's core, pixels
    label_halo: int  # post-processing halo, pixels
    probabilities: str  # zarr path
    labels: str  # zarr path
    postprocess: dict  # threshold, min_size, split_touching
    model: str | None  # model file or bundled name, for workers that load their own
    predictor_settings: dict = field(default_factory=dict)
    torch_threads: int | None = None
    #: the factor blocks are resized by for the network (see :mod:`napari_unet.scaling`)
    scale: float = 1.0

    def plane_index(self, plane: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(plane, self.plane_shape)) if self.plane_shape else ()

    def prob_index(self, plane: int, region: tuple[slice, ...]) -> tuple:
        k = (slice(None),) if self.n_out > 1 else ()
        return self.plane_index(plane) + k + tuple(region)


@dataclass
class BlockLabels:
    """What the label pass of one block reports: its number of ids and its seam records."""

    plane: int
    block: tuple[int, ...]
    n_ids: int
    # (axis, side) -> (positions on the face, block-local id) where the block's view puts the pixel
    # on its face and its neighbour across the seam in one object
    faces: dict = field(default_factory=dict)
    counts: quality.ResultCounts = field(default_factory=quality.ResultCounts)  # of the core: is the result plausible?


def _predictor_for(plan: LargePlan, predictor: Predictor | None) -> Predictor:
    if predictor is not None:
        return predictor
    from .distributed import cached_predictor

    return cached_predictor(plan.model, plan.predictor_settings, plan.torch_threads)


def predict_block_iter(plan: LargePlan, source, plane: int, block: tuple[int, ...], normalizer: Normalizer,
                       predictor: Predictor | None = None, stop: threading.Event | None = None,
                       warnings: list[str] | None = None) -> Iterator[int]:
    """Pass 1 for one block: predict its core (seeing ``plan.halo`` around it) into the
    probabilities store; yields the number of tiles done after each batch."""
    import torch

    predictor = _predictor_for(plan, predictor)
    image = _open_source(source)
    src = SourcePlane(image, plane, plan.spatial_dims, plan.in_channels, plan.channel_axis, plan.rgb)
    core = plan.grid.core(block)
    h = plan.halo
    size = [s.stop - s.start + 2 * h for s in core]
    window = normalizer(read_window(src, [s.start - h for s in core], size))
    if plan.scale != 1:  # the network sees the window resized; its probabilities come back to the window's size
        window = resize_image(window, scaled_shape(window.shape, plan.scale))
    out = np.empty((plan.n_out,) + tuple(window.shape[1:]), np.float32)
    warnings = [] if warnings is None else warnings
    while True:
        try:
            # the window is already normalised with the plane's statistics: "none" keeps it as it is
            yield from predictor.predict_plane(window, {"kind": "none"}, warnings, stop, out)
            break
        except torch.OutOfMemoryError:
            warnings.append(predictor.recover_from_oom())
    if plan.scale != 1:
        out = resize_image(out, size)
    inner = (slice(None),) + tuple(slice(h, h + s.stop - s.start) for s in core)
    result = out[inner]
    probs = _open_array(plan.probabilities)
    probs[plan.prob_index(plane, core)] = result if plan.n_out > 1 else result[0]


def predict_block(plan: LargePlan, source, plane: int, block: tuple[int, ...], normalizer: Normalizer,
                  predictor: Predictor | None = None) -> dict:
    """Pass 1 for one block as one call (a dask task); returns who ran it, for the record."""
    from .distributed import model_loads

    warnings: list[str] = []
    for _ in predict_block_iter(plan, source, plane, block, normalizer, predictor, None, warnings):
        pass
    return {"pid": os.getpid(), "model_loads": model_loads(), "warnings": warnings}


def label_block(plan: LargePlan, plane: int, block: tuple[int, ...]) -> BlockLabels:
    """Pass 2 for one block: post-process its core plus ``plan.label_halo``, write the core with
    block-local ids 1..n and report seam agreements (see :class:`BlockLabels`)."""
    grid, lh = plan.grid, plan.label_halo
    core = grid.core(block)
    ext = tuple(slice(max(0, s.start - lh), min(n, s.stop + lh)) for s, n in zip(core, grid.shape))
    probs = np.asarray(_open_array(plan.probabilities, "r")[plan.prob_index(plane, ext)])
    if plan.n_out == 1:
        probs = probs[None]
    view = probabilities_to_labels(probs, target=plan.target, scale=plan.scale, **plan.postprocess)
    inner = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(core, ext))
    core_labels = view[inner]
    present = np.unique(core_labels)
    present = present[present > 0]
    lut = np.zeros(int(view.max()) + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    labels = _open_array(plan.labels)
    labels[plan.plane_index(plane) + core] = lut[core_labels]
    faces = {}
    for axis in range(len(grid.shape)):
        for side in (-1, 1):
            if grid.neighbour(block, axis, side) is None:
                continue
            edge = inner[axis].start if side < 0 else inner[axis].stop - 1
            at = tuple(slice(edge, edge + 1) if a == axis else s for a, s in enumerate(inner))
            across = tuple(slice(edge + side, edge + side + 1) if a == axis else s for a, s in enumerate(inner))
            here, there = view[at].ravel(), view[across].ravel()
            agree = np.flatnonzero((here == there) & (here > 0))
            faces[(axis, side)] = (agree.astype(np.int64), lut[here[agree]])
    return BlockLabels(plane, tuple(block), len(present), faces, quality.count(probs[(slice(None),) + inner]))


def relabel_block(plan: LargePlan, plane: int, block: tuple[int, ...], ids: np.ndarray) -> tuple[int, tuple]:
    """Pass 3 for one block: block-local id ``i`` becomes ``ids[i]`` (``ids[0] == 0``)."""
    labels = _open_array(plan.labels)
    index = plan.plane_index(plane) + plan.grid.core(block)
    labels[index] = ids[np.asarray(labels[index])]
    return plane, tuple(block)


# -- joining ids across seams ---------------------------------------------------------------------
class SeamJoiner:
    """Collects each block's ids and seam records; numbers objects across blocks at the end.

    Seam records are paired as soon as both blocks of a seam have reported and then dropped, so
    memory holds one small record per unfinished seam plus one edge per object crossing a seam.
    """

    def __init__(self, grid: BlockGrid):
        self.grid = grid
        self.n_ids: dict[tuple[int, int], int] = {}  # (plane, block linear index) -> ids in the block
        self._pending: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._edges: list[np.ndarray] = []  # rows (plane, block a, id a, block b, id b)

    def add(self, result: BlockLabels) -> None:
        grid, plane = self.grid, result.plane
        lin = grid.linear(result.block)
        self.n_ids[(plane, lin)] = result.n_ids
        for (axis, side), record in result.faces.items():
            other = grid.linear(grid.neighbour(result.block, axis, side))
            mate = self._pending.pop((plane, other, axis, -side), None)
            if mate is None:
                self._pending[(plane, lin, axis, side)] = record
                continue
            _, i_here, i_there = np.intersect1d(record[0], mate[0], assume_unique=True, return_indices=True)
            if len(i_here):
                pairs = np.unique(np.stack([record[1][i_here], mate[1][i_there]], axis=1), axis=0)
                rows = np.empty((len(pairs), 5), np.int64)
                rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4] = plane, lin, pairs[:, 0], other, pairs[:, 1]
                self._edges.append(rows)

    def number(self, n_planes: int) -> tuple[dict[tuple[int, int], np.ndarray], list[int]]:
        """Final ids: ``{(plane, block linear index): ids}`` with ``ids[local] = global`` (``ids[0] =
        0``) and the number of objects per plane. Ids follow block raster order, so they do not
        depend on which block finished first."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        edges = np.concatenate(self._edges) if self._edges else np.zeros((0, 5), np.int64)
        tables: dict[tuple[int, int], np.ndarray] = {}
        counts = []
        n_blocks = self.grid.n_blocks
        for plane in range(n_planes):
            sizes = np.array([self.n_ids.get((plane, b), 0) for b in range(n_blocks)], np.int64)
            base = np.concatenate([[0], np.cumsum(sizes)])
            n_nodes = int(base[-1])
            mine = edges[edges[:, 0] == plane]
            a = base[mine[:, 1]] + mine[:, 2] - 1
            b = base[mine[:, 3]] + mine[:, 4] - 1
            graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
            n_objects, component = connected_components(graph, directed=False) if n_nodes else (0, np.zeros(0))
            counts.append(int(n_objects))
            for blk in range(n_blocks):
                tables[(plane, blk)] = np.concatenate([[0], component[base[blk]:base[blk + 1]] + 1]).astype(np.int32)
        return tables, counts


_STAGE_MESSAGE = {"label": "finding objects", "number": "numbering objects"}


def _label_passes(plan: LargePlan, jobs: list, runner, stop,
                  counts: list | None = None) -> Iterator[tuple[str, int, tuple]]:
    """Passes 2 and 3 over ``jobs`` ((plane, block) pairs); yields (stage, plane, block) per block
    done, returns the number of objects per plane. ``counts``, a list, receives each block's
    :class:`~napari_unet.inference.quality.ResultCounts`."""
    grid = plan.grid
    joiner = SeamJoiner(grid)
    for result in runner.map(label_block, [(plan, p, b) for p, b in jobs], stop):
        joiner.add(result)
        if counts is not None:
            counts.append(result.counts)
        yield "label", result.plane, result.block
    n_planes = int(np.prod(plan.plane_shape, dtype=np.int64))
    tables, counts = joiner.number(n_planes)
    for plane, block in runner.map(relabel_block, [(plan, p, b, tables[(p, grid.linear(b))]) for p, b in jobs],
                                   stop):
        yield "number", plane, block
    return counts


def labels_from_probabilities_iter(probabilities: str | os.PathLike, labels_path: str | os.PathLike, *,
                                   target: str | None = None, spatial_dims: int = 2, threshold: float = 0.5,
                                   min_size: int = 16, split_touching: bool = True,
                                   block_size: int | Sequence[int] | None = None,
                                   label_halo: int | None = None, runner=None,
                                   stop: threading.Event | None = None) -> Iterator[Progress]:
    """Instance labels from stored probabilities, block by block (passes 2 and 3 only); yields
    :class:`Progress`, returns the number of objects per plane.

    ``probabilities`` is a zarr store laid out as :func:`segment_to_zarr_iter` writes it:
    ``(*planes, *spatial)`` for binary targets, ``(*planes, 2, *spatial)`` for boundary targets
    (``target`` defaults to the one recorded in the store). Use it to try other post-processing
    settings on a large image without predicting again. ``min_size`` counts network pixels, as
    in the model file (the scale the store records, see :mod:`napari_unet.scaling`).
    """
    from .distributed import LocalRunner

    runner = runner or LocalRunner()
    probabilities = Path(probabilities)
    array = _open_array(probabilities, "r")
    recorded = dict(array.attrs).get("napari_unet", {})
    target = target or recorded.get("target", "binary")
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
    block = _block_side(block_size, spatial_dims, (1,) * spatial_dims)
    grid = BlockGrid(spatial, tuple(min(b, n) for b, n in zip(block, spatial)))
    labels_path = Path(labels_path)
    _check_output(labels_path)
    tmp = labels_path.with_name(f".{labels_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    post = {"threshold": threshold, "min_size": min_size, "split_touching": split_touching}
    try:
        _create_array(tmp, planes + spatial, (1,) * len(planes) + chunk_shape(grid.block, spatial_dims), np.int32,
                      {"napari_unet": {**recorded, "target": target, **post, "label_halo": label_halo}})
        plan = LargePlan(planes, grid, spatial_dims, 1, n_out, target, None, False, 0, int(label_halo),
                         str(probabilities), str(tmp), post, None, scale=float(recorded.get("scale", 1.0)))
        n_planes = int(np.prod(planes, dtype=np.int64))
        jobs = [(p, b) for p in range(n_planes) for b in grid.indices()]
        total, done = 2 * len(jobs), 0

        def labelled(step):
            nonlocal done
            done += 1
            return Progress(done, total, _STAGE_MESSAGE[step[0]], step[1], n_planes)

        counts = yield from relay(_label_passes(plan, jobs, runner, stop), labelled)
        _commit(tmp, labels_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class BlockProgress(Progress):
    """:class:`Progress` of :func:`segment_to_zarr_iter`, with where it stands.

    ``stage``: ``"start"``, ``"predict"``, ``"label"`` (the block's labels are written with
    block-local ids) or ``"number"`` (the block has its final ids). ``region``: the index
    (plane indices, then spatial slices) of the block just written, or None. ``labels_path``: the
    store being written when the run writes in place (no ``labels_path`` given), so that a viewer
    can show it as a layer while it fills, refreshing ``region`` after each event; else None.
    """

    stage: str = ""
    region: tuple | None = None
    labels_path: str | None = None


def needs_blocks(data, spatial_dims: int = 2, max_pixels: int = 64 * 2 ** 20) -> bool:
    """Whether an image should go through :func:`segment_to_zarr_iter` rather than a single pass:
    it is lazy (dask, zarr, memory-mapped), or its planes have more than ``max_pixels`` pixels
    (64 Mpx by default: a single pass holds a few float32 copies of a plane)."""
    if isinstance(data, np.memmap) or _is_zarr_array(data) or (hasattr(data, "compute") and hasattr(data, "chunks")):
        return True
    spatial = tuple(getattr(data, "shape", ()))[-spatial_dims:]
    return int(np.prod(spatial, dtype=np.int64)) > max_pixels


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
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    path = getattr(model, "path", None)
    return None if path is None else str(path)


def _label_halo(value: int | None, spatial_dims: int) -> int:
    if value is None:
        return DEFAULT_LABEL_HALO if spatial_dims == 2 else DEFAULT_LABEL_HALO_3D
    if int(value) < 1:
        raise ValueError(f"label_halo must be at least 1 pixel, got {value}.")
    return int(value)


def _block_side(value, spatial_dims: int, align: Sequence[int]) -> tuple[int, ...]:
    if value is None:
        value = DEFAULT_BLOCK_2D if spatial_dims == 2 else DEFAULT_BLOCK_3D
    sides = (int(value),) * spatial_dims if np.isscalar(value) else tuple(int(v) for v in value)
    if len(sides) != spatial_dims or min(sides) < 16:
        raise ValueError(f"block_size must be one side of at least 16 pixels, or {spatial_dims} of them; got {value}.")
    # a multiple of the network's pooling factor keeps every tile on the single pass's pooling grid
    return tuple(-(-s // a) * a for s, a in zip(sides, align))


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
        probabilities_path: where to keep the probabilities (``.zarr``); None discards them.
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
            progress, labelling on a few threads), or one from :mod:`.distributed`.
        torch_threads: PyTorch threads on cluster workers (None: the worker's cores / its threads).
        stop: set it to cancel between tiles or blocks (raises :class:`PredictionCancelled`).

    Other arguments are those of :func:`~.segment.segment_iter` / :class:`~.predictor.Predictor`.
    Peak memory depends on the block size, not on the image size.
    """
    from .distributed import LocalRunner

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
    # arrange the image lazily: checks its axes and channels before any work
    source = str(image) if isinstance(image, (str, os.PathLike)) else image
    data = _open_source(source)
    lazy = as_lazy(data)
    if isinstance(lazy, np.ndarray) and (channel_axis is not None or rgb):
        import dask.array as da  # a colour image turns grey lazily, never whole

        lazy = da.from_array(lazy, chunks="auto", name=False)
    prepared = prepare_image(lazy, lm.spatial_dims, lm.in_channels, channel_axis, rgb)
    warnings = list(prepared.warnings)
    from .segment import resolve_diameter  # "auto": estimated on a central crop of the middle plane

    diameter, size_estimate = run_to_end(resolve_diameter(lazy, diameter, predictor=predictor, stop=stop,
                                                          channel_axis=channel_axis, rgb=rgb))
    scale = lm.scale(diameter)
    if label_halo is None and scale < 1:  # objects are 1 / scale times larger than the network's in image pixels
        label_halo = int(math.ceil(_label_halo(None, lm.spatial_dims) / scale))
    label_halo = _label_halo(label_halo, lm.spatial_dims)
    chunks = getattr(as_lazy(data), "chunksize", None)  # a zarr or dask input's own chunks
    if chunks is not None and np.prod(chunks, dtype=np.float64) > 16 * DEFAULT_BLOCK_2D ** 2:
        warnings.append(f"The image is stored in chunks of {tuple(chunks)}: every block reads whole chunks, so "
                        "memory grows with them. Rechunk it (e.g. zarr chunks of 1024 px) for flat memory.")
    spatial = prepared.spatial_shape
    net = lm.net
    align = tuple(int(a) for a in net.size_divisor)
    block = _block_side(block_size, lm.spatial_dims, align)
    grid = BlockGrid(spatial, tuple(min(b, -(-n // a) * a) for b, n, a in zip(block, spatial, align)))
    # the halo must cover what a tile sees around its core, on the same pooling grid as a single pass
    needed = int(math.ceil((predictor.context + predictor.blend) / scale))  # network pixels -> image pixels
    pred_halo = max(-(-needed // a) * a for a in align) if needed else 0
    tuned = lm.postprocess
    post = {"threshold": tuned["threshold"] if threshold is None else threshold,
            "min_size": tuned["min_size"] if min_size is None else min_size,
            "split_touching": tuned["split_touching"] if split_touching is None else split_touching}
    if not 0.0 < post["threshold"] < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {post['threshold']}.")
    n_out = max(1, net.out_channels - 1)

    # outputs: temporary stores beside the final ones, renamed at the end; without a labels path,
    # a new temporary folder's store is written in place (a viewer layer can show it meanwhile)
    keep_probs = probabilities_path is not None
    in_place = labels_path is None
    if in_place:
        import tempfile

        labels_path = Path(tempfile.mkdtemp(prefix="napari-unet-")) / "labels.zarr"
    labels_path = Path(labels_path)
    _check_output(labels_path)
    if keep_probs:
        probabilities_path = Path(probabilities_path)
        _check_output(probabilities_path)
        if probabilities_path.resolve() == labels_path.resolve():
            raise ValueError("The labels and the probabilities need two different .zarr paths.")
    token = uuid.uuid4().hex[:8]
    finished = False
    tmp_labels = labels_path if in_place else labels_path.with_name(f".{labels_path.name}.tmp-{token}")
    tmp_probs = (probabilities_path.with_name(f".{probabilities_path.name}.tmp-{token}") if keep_probs
                 else labels_path.with_name(f".{labels_path.name}.probabilities-{token}"))
    planes = prepared.plane_shape
    chunks = chunk_shape(grid.block, lm.spatial_dims)
    attrs = {"napari_unet": {"model": lm.name, "target": lm.target, "classes": lm.classes[1:],
                             **{k: v for k, v in post.items()}, "block_size": list(grid.block),
                             "label_halo": label_halo, "scale": scale}}
    try:
        _create_array(tmp_labels, planes + spatial, (1,) * len(planes) + chunks, np.int32, attrs)
        k_axis = (n_out,) if n_out > 1 else ()
        _create_array(tmp_probs, planes + k_axis + spatial, (1,) * len(planes) + k_axis + chunks, np.float32,
                      attrs)
        plan = LargePlan(planes, grid, lm.spatial_dims, lm.in_channels, n_out, lm.target, channel_axis, rgb,
                         pred_halo, int(label_halo), str(tmp_probs), str(tmp_labels), post, model_ref,
                         settings, torch_threads, scale)
        n_planes = prepared.n_planes
        blocks = grid.indices()
        jobs = [(p, b) for p in range(n_planes) for b in blocks]
        # progress: tiles of every block when predicting here, else blocks; then two block passes
        if runner.local:
            window_tiles = {}
            for b in blocks:
                shape = tuple(s.stop - s.start + 2 * pred_halo for s in grid.core(b))
                if shape not in window_tiles:
                    window_tiles[shape] = predictor.plan(scaled_shape(shape, scale) if scale != 1 else shape).n_tiles
            pass1 = n_planes * sum(window_tiles[tuple(s.stop - s.start + 2 * pred_halo for s in grid.core(b))]
                                   for b in blocks)
        else:
            pass1 = len(jobs)
        total = pass1 + 2 * len(jobs)
        done = 0
        where = str(predictor.device) if runner.local else runner.describe()
        live = str(tmp_labels) if in_place else None

        def event(stage, plane=0, block=None, message=""):
            region = None if block is None else plan.plane_index(plane) + grid.core(block)
            return BlockProgress(done, total, message, plane, n_planes, stage, region, live)

        yield event("start", message=f"predicting {grid.n_blocks} block(s) on {where}")
        normalizers = []
        import dask

        with dask.config.set(scheduler="threads"):  # never the cluster's (this may run in a worker's task)
            for p in range(n_planes):
                normalizers.append(fit_normalizer(prepared.plane(p), lm.normalization, warnings))
                _drop_mapped_pages(data)
        model_loads: dict[int, int] = {}

        # pass 1: probabilities
        if runner.local:
            for i, (p, b) in enumerate(jobs):
                for n in predict_block_iter(plan, source, p, b, normalizers[p], predictor, stop, warnings):
                    done += n
                    yield event("predict", p, None, f"block {i + 1}/{len(jobs)}")
        else:
            shared = runner.share(source)
            for result in runner.map(predict_block, [(plan, shared, p, b, normalizers[p]) for p, b in jobs], stop):
                model_loads[result["pid"]] = result["model_loads"]
                warnings.extend(w for w in result["warnings"] if w not in warnings)
                done += 1
                yield event("predict", 0, None, f"block {done}/{len(jobs)}")

        # passes 2 and 3: labels per block, then one id per object across seams
        def labelled(step):
            nonlocal done
            done += 1
            return event(*step, _STAGE_MESSAGE[step[0]])

        block_counts: list = []
        counts = yield from relay(_label_passes(plan, jobs, runner, stop, block_counts), labelled)
        message = quality.warning(sum(block_counts, quality.ResultCounts()), int(sum(counts)), lm.name)
        if message:  # implausible (noise, a blank slide, a wrong model): said in one line, not refused
            warnings.append(message)

        if not in_place:
            _commit(tmp_labels, labels_path)
        if keep_probs:
            _commit(tmp_probs, probabilities_path)
        finished = True
    finally:
        for tmp in (tmp_probs,) if in_place and finished else (tmp_labels, tmp_probs):
            shutil.rmtree(tmp, ignore_errors=True)
        if in_place and not finished:
            shutil.rmtree(labels_path.parent, ignore_errors=True)
    return LargeSegmentation(
        labels=_open_array(labels_path, "r+"),
        probabilities=_open_array(probabilities_path, "r") if keep_probs else None,
        labels_path=labels_path, probabilities_path=probabilities_path if keep_probs else None,
        n_objects=counts, target=lm.target, device=where, warnings=warnings,
        seconds=time.perf_counter() - start, n_blocks=grid.n_blocks, model_loads=model_loads,
        size_estimate=size_estimate)


def segment_to_zarr(model, image, labels_path=None, probabilities_path=None, **kwargs) -> LargeSegmentation:
    """Blocking form of :func:`segment_to_zarr_iter`."""
    return run_to_end(segment_to_zarr_iter(model, image, labels_path, probabilities_path, **kwargs))
