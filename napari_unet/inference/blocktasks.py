"""The work of one block of a large image, and the numbering of objects across blocks.

Three passes run over the blocks of :class:`~.blockplan.LargePlan` (see :mod:`.large` for the
whole method), each block an independent task that a runner (:mod:`.runners`) may send to a
cluster worker:

1. :func:`predict_block` / :func:`predict_block_iter`: probabilities of the block's core, seeing
   ``plan.halo`` around it, into the probabilities store;
2. :func:`label_block`: labels of the core with block-local ids, seeing ``plan.label_halo`` of
   probabilities around it, and which pixel pairs across each seam the block puts in one object;
3. :func:`relabel_block`: the core's final ids, numbered by :class:`SeamJoiner`.

:func:`label_passes` runs passes 2 and 3 on a runner.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import quality
from .blockplan import BlockGrid, LargePlan
from .inputs import Normalizer
from .lazyio import SourcePlane, _open_array, _open_source
from .postprocess import probabilities_to_labels
from .predictor import Predictor
from .runners import cached_predictor, model_loads
from ..scaling import resize_window, unresize_window
from .tiling import read_window


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
    origin = [s.start - h for s in core]
    window = normalizer(read_window(src, origin, size))
    if plan.scale != 1:  # the network sees the window resized on the plane's resized grid (no seams between
        # blocks); its probabilities come back to the window's pixels the same way
        window, net_origin = resize_window(window, origin[-2:], plan.grid.shape, plan.scale)
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
        out = unresize_window(out, net_origin, plan.grid.shape, plan.scale, origin[-2:], size[-2:])
    inner = (slice(None),) + tuple(slice(h, h + s.stop - s.start) for s in core)
    result = out[inner]
    probs = _open_array(plan.probabilities)
    probs[plan.prob_index(plane, core)] = result if plan.n_out > 1 else result[0]


def predict_block(plan: LargePlan, source, plane: int, block: tuple[int, ...], normalizer: Normalizer,
                  predictor: Predictor | None = None) -> dict:
    """Pass 1 for one block as one call (a dask task); returns who ran it, for the record."""
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


#: What each stage of :func:`label_passes` is doing, for progress messages.
STAGE_MESSAGE = {"label": "finding objects", "number": "numbering objects"}


def label_passes(plan: LargePlan, jobs: list, runner, stop,
                 block_counts: list | None = None) -> Iterator[tuple[str, int, tuple]]:
    """Passes 2 and 3 over ``jobs`` ((plane, block) pairs); yields (stage, plane, block) per block
    done, returns the number of objects per plane. ``block_counts``, a list, receives each block's
    :class:`~napari_unet.inference.quality.ResultCounts`."""
    grid = plan.grid
    joiner = SeamJoiner(grid)
    for result in runner.map(label_block, [(plan, p, b) for p, b in jobs], stop):
        joiner.add(result)
        if block_counts is not None:
            block_counts.append(result.counts)
        yield "label", result.plane, result.block
    tables, counts = joiner.number(plan.n_planes)
    for plane, block in runner.map(relabel_block, [(plan, p, b, tables[(p, grid.linear(b))]) for p, b in jobs],
                                   stop):
        yield "number", plane, block
    return counts

