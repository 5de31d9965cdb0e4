"""Prediction plus post-processing in one generator: the job behind the Segment widget and CLI."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..jobs import PredictionCancelled, Progress
from . import quality
from .postprocess import probabilities_to_labels
from .predictor import Prediction, Predictor, predict_iter, take_predictor_arguments


@dataclass
class Segmentation:
    """Instance labels ``(*planes, *spatial)`` int32, the prediction they came from, and the
    object size estimated for it (None when the size was given or the model declares none)."""

    labels: np.ndarray
    prediction: Prediction
    size_estimate: object = None  # napari_unet.inference.estimate.SizeEstimate


def resolve_diameter(image, diameter, *, predictor: Predictor, stop=None, channel_axis=None, rgb=False):
    """``diameter`` as a number of pixels or None, estimating it when it is ``"auto"``, or None for
    a model that estimates sizes (:attr:`~napari_unet.modelfile.LoadedModel.estimates_size`).
    A generator: yields the estimate's progress, returns ``(diameter, SizeEstimate or None)``."""
    lm = predictor.model
    auto = isinstance(diameter, str) and diameter.strip().lower() == "auto"
    if isinstance(diameter, str) and not auto:
        raise ValueError(f"The object size must be a number of pixels or 'auto', got {diameter!r}.")
    if not (lm.object_diameter and auto) and not (diameter is None and lm.estimates_size):
        return (None if auto else diameter), None
    from .estimate import estimate_diameter_iter

    estimate = yield from estimate_diameter_iter(lm, image, channel_axis=channel_axis, rgb=rgb, stop=stop,
                                                 predictor=predictor)
    return estimate.diameter, estimate


def segment_iter(model, image, *, threshold: float | None = None, min_size: int | None = None,
                 split_touching: bool | None = None, stop: threading.Event | None = None,
                 predictor: Predictor | None = None, **predict_kwargs) -> Iterator[Progress]:
    """Yield :class:`Progress` while predicting and post-processing; return a :class:`Segmentation`.

    Post-processing settings left as ``None`` take the values the model was tuned with
    (``LoadedModel.postprocess``). ``predict_kwargs`` go to
    :func:`~napari_unet.inference.predictor.predict_iter` (``channel_axis``, ``rgb``, ``device``,
    ``tile_size``, ``halo``..., ``diameter``: a number of pixels, or ``"auto"`` to estimate it
    first, which is also what None means for a model that estimates sizes, see
    :func:`resolve_diameter`). ``min_size`` counts pixels at the network's scale
    (see :mod:`napari_unet.scaling`; the same as image pixels for a model that declares none).
    """
    if predictor is None:
        predictor = Predictor(model, **take_predictor_arguments(predict_kwargs))
    tuned = predictor.model.postprocess
    threshold = tuned["threshold"] if threshold is None else threshold
    min_size = tuned["min_size"] if min_size is None else min_size
    split_touching = tuned["split_touching"] if split_touching is None else split_touching
    predict_kwargs["diameter"], estimate = yield from resolve_diameter(
        image, predict_kwargs.get("diameter"), predictor=predictor, stop=stop,
        channel_axis=predict_kwargs.get("channel_axis"), rgb=predict_kwargs.get("rgb", False))
    prediction: Prediction = yield from predict_iter(model, image, stop=stop, predictor=predictor, **predict_kwargs)
    probs = prediction.probabilities
    spatial_dims = prediction.spatial_dims
    planes = probs.shape[: probs.ndim - spatial_dims - 1]
    flat = probs.reshape((-1,) + probs.shape[len(planes):])
    labels = np.zeros((flat.shape[0],) + probs.shape[-spatial_dims:], np.int32)
    counts = quality.ResultCounts()
    for i in range(flat.shape[0]):
        if stop is not None and stop.is_set():
            raise PredictionCancelled()
        labels[i] = probabilities_to_labels(flat[i], target=prediction.target, threshold=threshold,
                                            min_size=min_size, split_touching=split_touching,
                                            split_depth=tuned.get("split_depth", 1.0), scale=prediction.scale)
        counts += quality.count(flat[i], labels[i])
        yield Progress(i + 1, flat.shape[0], "finding objects", i, flat.shape[0])
    message = quality.warning(counts, int(labels.reshape(len(labels), -1).max(axis=1, initial=0).sum()),
                              predictor.model.name)
    if message:  # implausible (noise, a blank slide, a wrong model): said in one line, not refused
        prediction.warnings.append(message)
    return Segmentation(labels.reshape(planes + labels.shape[1:]), prediction, estimate)
