"""What every depth of a deep-supervision network predicts, how good each is, and where to look.

The job behind the Deep-supervision widget (and usable from Python):

* :func:`predict_depths_iter`: one tiled pass that returns every side output of U-Net++ / U-Net 3+
  (or any network whose ``forward(x, side_outputs=True)`` returns several heads); nothing is
  recomputed per depth.
* :func:`score_depths`: Dice and AP@0.5 of each depth, of the ensemble and of anything else
  against corrected labels, within the reviewed region when there is one.
* :func:`predict_pruned_iter`: U-Net++ run as its depth-``k`` sub-network only, timed.
* :func:`regions_to_review`: image blocks ranked by how much the depths disagree there,
  skipping what the user has already reviewed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..jobs import PredictionCancelled, Progress
from ..scaling import scaled_shape
from .postprocess import probabilities_to_labels
from .predictor import Prediction, Predictor, predict_iter, take_predictor_arguments


@dataclass
class DepthPrediction:
    """Every side output of one tiled pass.

    ``probabilities``: ``(D, *planes, K, *spatial)`` float32, one entry per side output in the
    network's order (``names``; the main output first), K classes but the background.
    """

    names: list[str]
    probabilities: np.ndarray
    target: str
    spatial_dims: int
    device: str
    seconds: float
    warnings: list[str]
    #: U-Net 3+'s classification-guided module: "object present" probability per tile,
    #: ``(*planes, *tiles per axis)``, with the tile cores in ``tile_cores``; ``None`` otherwise.
    object_probability: np.ndarray | None = None
    #: Per spatial axis, the ``(start, stop)`` image range of each tile's core.
    tile_cores: tuple[tuple[tuple[int, int], ...], ...] = ()
    #: the factor the image was resized by for the network (see :attr:`Prediction.scale`)
    scale: float = 1.0

    @property
    def n_depths(self) -> int:
        return len(self.names)

    @property
    def _k_axis(self) -> int:
        return self.probabilities.ndim - self.spatial_dims - 1

    def foreground(self, depth: int | None = None) -> np.ndarray:
        """Foreground probability ``(*planes, *spatial)`` of side output ``depth`` (index into
        ``names``), or of the ensemble with ``depth=None``."""
        probs = self.class_probabilities(depth)
        return probs.sum(axis=probs.ndim - self.spatial_dims - 1)

    def class_probabilities(self, depth: int | None = None) -> np.ndarray:
        """``(*planes, K, *spatial)`` of side output ``depth``, or of the ensemble (``None``)."""
        return self.ensemble() if depth is None else self.probabilities[depth]

    def ensemble(self) -> np.ndarray:
        """Mean class probabilities over the depths, ``(*planes, K, *spatial)``."""
        return self.probabilities.mean(axis=0)

    def disagreement(self) -> np.ndarray:
        """Standard deviation over the depths of the foreground probability, ``(*planes, *spatial)``:
        0 where every depth predicts the same, up to 0.5 where they split half and half."""
        foreground = self.probabilities.sum(axis=self._k_axis)
        # the spread of the differences to one depth: the same value, but exactly 0 where all agree
        return (foreground - foreground[:1]).std(axis=0)

    def object_probability_map(self) -> np.ndarray | None:
        """The per-tile "object present" probability painted over each tile's core,
        ``(*planes, *spatial)``; ``None`` for networks without a classification-guided module."""
        if self.object_probability is None:
            return None
        n_plane_axes = self.object_probability.ndim - self.spatial_dims
        planes = self.object_probability.shape[:n_plane_axes]
        spatial = tuple(cores[-1][1] for cores in self.tile_cores)
        out = np.zeros(planes + spatial, np.float32)
        for tile in np.ndindex(*self.object_probability.shape[n_plane_axes:]):
            box = tuple(slice(*self.tile_cores[a][i]) for a, i in enumerate(tile))
            value = self.object_probability[(Ellipsis,) + tile]
            out[(Ellipsis,) + box] = np.reshape(value, np.shape(value) + (1,) * self.spatial_dims)
        return out


def _split_heads(prediction: Prediction) -> np.ndarray:
    """``(*planes, D*K, *spatial)`` -> ``(D, *planes, K, *spatial)``."""
    probs = prediction.probabilities
    d = len(prediction.heads)
    k_axis = probs.ndim - prediction.spatial_dims - 1
    planes, spatial = probs.shape[:k_axis], probs.shape[k_axis + 1:]
    k = probs.shape[k_axis] // d
    split = probs.reshape(planes + (d, k) + spatial)
    return np.moveaxis(split, k_axis, 0)


def deep_supervision_predictor(model, **predictor_kwargs) -> Predictor:
    """A :class:`Predictor` that returns every side output; ``ValueError`` for a network that has
    only one output (its side outputs would all be the same map)."""
    return require_side_outputs(Predictor(model, side_outputs=True, **predictor_kwargs))


def require_side_outputs(predictor: Predictor) -> Predictor:
    """``predictor`` (made with ``side_outputs=True``) when its network has several side outputs;
    else ``ValueError`` (its side outputs would all be the same map)."""
    if len(predictor.heads) < 2:
        raise ValueError(f"'{predictor.model.name}' ({predictor.model.net.architecture}) has no deep supervision: "
                         "choose a U-Net++ or U-Net 3+ model to see its depths.")
    return predictor


def predict_depths_iter(model, image, *, predictor: Predictor | None = None, stop: threading.Event | None = None,
                        **kwargs) -> Iterator[Progress]:
    """Yield :class:`Progress` while predicting every side output of ``model`` on ``image`` in one
    tiled pass; return a :class:`DepthPrediction`.

    ``predictor`` (from :func:`deep_supervision_predictor`) is reused when given; ``kwargs`` go to
    the predictor (``device``, ``tile_size``, ``halo``...) and to
    :func:`~napari_unet.inference.predictor.predict_iter` (``channel_axis``, ``rgb``).
    """
    if predictor is None:
        predictor = deep_supervision_predictor(model, **take_predictor_arguments(kwargs))
    elif not predictor.side_outputs:
        raise ValueError("The predictor must be made with side_outputs=True (deep_supervision_predictor).")
    prediction: Prediction = yield from predict_iter(predictor.model, image, predictor=predictor, stop=stop, **kwargs)
    spatial = prediction.probabilities.shape[-prediction.spatial_dims:]
    plan = predictor.plan(scaled_shape(spatial, prediction.scale))
    cores = tuple(tuple(ax.core_range(i) for i in range(ax.n)) for ax in plan.axes)
    if prediction.scale != 1:  # tiles were cut from the resized image (in-plane axes): back to image pixels
        cores = tuple(c if a < len(cores) - 2 else
                      tuple((round(lo / prediction.scale), min(n, round(hi / prediction.scale))) for lo, hi in c)
                      for a, (c, n) in enumerate(zip(cores, spatial)))
    return DepthPrediction(list(prediction.heads), _split_heads(prediction), prediction.target,
                           prediction.spatial_dims, prediction.device, prediction.seconds, prediction.warnings,
                           prediction.object_probability, cores, prediction.scale)


def prune(predictor: Predictor, depth: int | None) -> Predictor:
    """Make ``predictor`` run a U-Net++ as its depth-``depth`` sub-network (``None``: the full one)."""
    if not hasattr(predictor.net, "set_prune_depth"):
        raise ValueError(f"'{predictor.model.name}' ({predictor.model.net.architecture}) cannot be pruned: only "
                         "U-Net++ models compute a shallower sub-network.")
    predictor.net.set_prune_depth(depth)
    return predictor


@dataclass
class PrunedRun:
    """A prediction by a U-Net++ pruned to ``depth`` (``None``: the full network), with its speed."""

    depth: int | None
    prediction: Prediction
    megapixels: float

    @property
    def ms_per_megapixel(self) -> float:
        return 1000.0 * self.prediction.seconds / max(self.megapixels, 1e-9)


def predict_pruned_iter(model, image, depth: int | None, *, predictor: Predictor | None = None,
                        stop: threading.Event | None = None, **kwargs) -> Iterator[Progress]:
    """Yield :class:`Progress` while predicting with only the sub-network that U-Net++ depth
    ``depth`` needs; return a :class:`PrunedRun` (prediction and time per megapixel).

    The time is that of the tiled pass alone (the model is loaded and prepared before it)."""
    if predictor is None:
        predictor = Predictor(model, **take_predictor_arguments(kwargs))
    prune(predictor, depth)
    prediction: Prediction = yield from predict_iter(predictor.model, image, predictor=predictor, stop=stop, **kwargs)
    foreground = prediction.foreground
    return PrunedRun(depth, prediction, foreground.size / 1e6)


def compare_pruned_iter(predictor: Predictor, image, depth: int, *, with_full: bool = True,
                        truth: np.ndarray | None = None, reviewed: np.ndarray | None = None,
                        stop: threading.Event | None = None, **kwargs) -> Iterator[Progress]:
    """Time (and, against ``truth``, score) U-Net++ pruned to ``depth``; with ``with_full``, first
    the full network the same way, after a warm-up so that both are timed alike. Yields
    :class:`Progress`; returns ``(runs, labels)``: ``(PrunedRun, DepthScore or None)`` per run
    (the full network's first) and the labels of the pruned run. ``kwargs`` go to
    :func:`predict_pruned_iter` (``rgb``, ``channel_axis``)."""
    shape = image.shape[:-1] if kwargs.get("rgb") else image.shape
    if with_full:
        predictor.warm_up(tuple(shape)[-predictor.spatial_dims:])
    runs, labels = [], None
    for k in ([None, depth] if with_full else [depth]):  # None: the full network, the reference
        run = yield from predict_pruned_iter(predictor.model, image, k, predictor=predictor, stop=stop, **kwargs)
        prediction = run.prediction
        labels = labels_from(prediction.probabilities, prediction.target, prediction.spatial_dims,
                             scale=prediction.scale, **predictor.model.postprocess)
        score = None if truth is None else score_labels(f"depth {k}", truth, labels, prediction.spatial_dims,
                                                        reviewed)
        runs.append((run, score))
    return runs, labels


# -- scores ----------------------------------------------------------------------------------

@dataclass
class DepthScore:
    """Agreement of one output with the corrections (over the reviewed region when given)."""

    name: str
    dice: float
    ap50: float
    n_objects: int
    n_true: int


def labels_from(probabilities: np.ndarray, target: str, spatial_dims: int, **postprocess) -> np.ndarray:
    """Instance labels ``(*planes, *spatial)`` from ``(*planes, K, *spatial)`` probabilities, plane
    by plane (ids restart in every plane)."""
    planes = probabilities.shape[: probabilities.ndim - spatial_dims - 1]
    flat = probabilities.reshape((-1,) + probabilities.shape[len(planes):])
    labels = np.stack([probabilities_to_labels(p, target=target, **postprocess) for p in flat])
    return labels.reshape(planes + labels.shape[1:])


def score_labels(name: str, truth: np.ndarray, predicted: np.ndarray, spatial_dims: int,
                 reviewed: np.ndarray | None = None) -> DepthScore:
    """Dice and AP@0.5 of ``predicted`` against ``truth`` (same shape, ``(*planes, *spatial)``).

    With a ``reviewed`` mask that is not empty, only reviewed pixels count (both label images are
    cut to it) and only planes with reviewed pixels; otherwise every plane counts. Object counts
    are summed over planes, so AP is ``TP / (TP + FP + FN)`` over the whole stack."""
    from ..metrics import match_instances

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError(f"The corrections have shape {truth.shape} but the prediction {predicted.shape}: choose "
                         "the labels layer that belongs to this image.")
    if reviewed is not None:
        reviewed = np.asarray(reviewed) > 0
        if reviewed.shape != truth.shape:
            raise ValueError(f"The reviewed region has shape {reviewed.shape}, the corrections {truth.shape}.")
        if not reviewed.any():
            reviewed = None
    n_plane_axes = truth.ndim - spatial_dims
    shape = truth.shape[n_plane_axes:]
    flat_t, flat_p = truth.reshape((-1,) + shape), predicted.reshape((-1,) + shape)
    flat_r = None if reviewed is None else reviewed.reshape((-1,) + shape)
    tp = fp = fn = inter = total = n_pred = n_true = 0
    for i in range(flat_t.shape[0]):
        t, p = flat_t[i], flat_p[i]
        if flat_r is not None:
            if not flat_r[i].any():
                continue
            t, p = np.where(flat_r[i], t, 0), np.where(flat_r[i], p, 0)
        m = match_instances(t, p, 0.5)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        n_pred, n_true = n_pred + m.n_pred, n_true + m.n_true
        a, b = t > 0, p > 0
        inter += int(np.count_nonzero(a & b))
        total += int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    dice = 1.0 if total == 0 else 2.0 * inter / total
    ap = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return DepthScore(name, float(dice), float(ap), int(n_pred), int(n_true))


def score_depths(depths: DepthPrediction, corrections: np.ndarray, reviewed: np.ndarray | None = None,
                 **postprocess) -> list[DepthScore]:
    """One :class:`DepthScore` per side output, then one for the ensemble ("ensemble (mean)").

    ``postprocess``: ``threshold``, ``min_size``, ``split_touching``, ``split_depth`` for turning each output into
    objects (use the model's tuned values, ``LoadedModel.postprocess``)."""
    scores = []
    for i, name in enumerate(depths.names + ["ensemble (mean)"]):
        probs = depths.class_probabilities(None if i == depths.n_depths else i)
        labels = labels_from(probs, depths.target, depths.spatial_dims, **{"scale": depths.scale, **postprocess})
        scores.append(score_labels(name, corrections, labels, depths.spatial_dims, reviewed))
    return scores


def best_score(scores: list[DepthScore]) -> int:
    """Index of the best score: highest AP@0.5, then highest Dice, then the first."""
    return max(range(len(scores)), key=lambda i: (scores[i].ap50, scores[i].dice, -i))


# -- where to correct next -------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """A block of the image: leading (plane) indices and the spatial box, with its score."""

    plane: tuple[int, ...]
    box: tuple[slice, ...]
    score: float

    @property
    def center(self) -> tuple[float, ...]:
        """Data coordinates of the block's centre: plane indices then spatial centres."""
        return tuple(float(p) for p in self.plane) + tuple((s.start + s.stop - 1) / 2 for s in self.box)

    @property
    def key(self) -> tuple:
        """The block's place (plane and box as numbers), the same for the same block of any run."""
        return self.plane, tuple((s.start, s.stop) for s in self.box)

    def describe(self) -> str:
        """``"disagreement 0.123 (plane 2, rows 0–128, columns 128–256)"``."""
        return f"disagreement {self.score:.3f} (plane {', '.join(map(str, self.plane)) or '-'}, " \
               f"rows {self.box[-2].start}–{self.box[-2].stop}, columns {self.box[-1].start}–{self.box[-1].stop})"


def regions_to_review(disagreement: np.ndarray, spatial_dims: int, reviewed: np.ndarray | None = None,
                      block: int = 128) -> list[Region]:
    """Blocks of ``block`` pixels per spatial axis, best first, ranked by the depths' disagreement
    over their pixels that nobody reviewed (blocks that are fully reviewed or where every depth
    agrees are left out). ``disagreement`` is ``(*planes, *spatial)``; ``reviewed`` the same shape."""
    if block < 1:
        raise ValueError(f"block must be at least 1 pixel, got {block}.")
    d = np.asarray(disagreement, np.float32)
    if reviewed is not None:
        reviewed = np.asarray(reviewed)
        if reviewed.shape != d.shape:
            raise ValueError(f"The reviewed region has shape {reviewed.shape}, the disagreement map {d.shape}.")
        d = np.where(reviewed > 0, 0.0, d)
    n_plane_axes = d.ndim - spatial_dims
    spatial = d.shape[n_plane_axes:]
    sizes = [min(block, n) for n in spatial]
    counts = [-(-n // s) for n, s in zip(spatial, sizes)]
    pad = [(0, 0)] * n_plane_axes + [(0, c * s - n) for c, s, n in zip(counts, sizes, spatial)]
    padded = np.pad(d, pad)
    shape = d.shape[:n_plane_axes] + tuple(x for c, s in zip(counts, sizes) for x in (c, s))
    block_axes = tuple(n_plane_axes + 2 * a + 1 for a in range(spatial_dims))
    means = padded.reshape(shape).mean(axis=block_axes)  # (*planes, *counts)
    order = np.argsort(means, axis=None)[::-1]
    regions = []
    for flat in order:
        score = float(means.flat[flat])
        if score <= 0:
            break
        index = np.unravel_index(flat, means.shape)
        plane, cell = index[:n_plane_axes], index[n_plane_axes:]
        box = tuple(slice(int(c) * s, min((int(c) + 1) * s, n)) for c, s, n in zip(cell, sizes, spatial))
        regions.append(Region(tuple(int(p) for p in plane), box, score))
    return regions


def next_region(disagreement: np.ndarray, spatial_dims: int, reviewed: np.ndarray | None = None,
                visited=()) -> Region | None:
    """The block of :func:`regions_to_review` with the most disagreement whose :attr:`Region.key`
    is not among ``visited``; None when every such block is reviewed or visited."""
    visited = set(visited)
    return next((region for region in regions_to_review(disagreement, spatial_dims, reviewed)
                 if region.key not in visited), None)


__all__ = ["DepthPrediction", "DepthScore", "PrunedRun", "Region", "best_score", "compare_pruned_iter",
           "deep_supervision_predictor", "labels_from", "next_region", "predict_depths_iter", "predict_pruned_iter",
           "prune", "regions_to_review", "require_side_outputs", "score_depths", "score_labels", "PredictionCancelled"]
