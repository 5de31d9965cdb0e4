"""Scoring a network under training on whole held-out images, as the user will run it.

Every function here predicts with the real tiled predictor and post-processing, so a
validation score is what a click on Segment would give. Setting ``stop`` raises
:class:`~napari_unet.inference.predictor.PredictionCancelled` within about one layer's time
(even inside a large tile), so a cancel never waits for a validation pass.
"""

from __future__ import annotations

import copy
import threading
from typing import Sequence

import numpy as np
import torch

from ..inference.postprocess import probabilities_to_labels
from ..inference.predictor import Predictor, predict
from ..jobs import PredictionCancelled
from ..metrics import evaluate, mean_metrics
from ..modelfile import DEFAULT_NORMALIZATION, LoadedModel, make_config

DEFAULT = DEFAULT_NORMALIZATION


def as_loaded_model(net: torch.nn.Module, normalization: dict = DEFAULT, target: str = "binary") -> LoadedModel:
    """A copy of ``net`` in eval mode wrapped for the predictor (the training net is untouched)."""
    frozen = copy.deepcopy(net).eval()
    return LoadedModel(net=frozen, config=make_config(frozen, net.architecture or "unet", target, normalization),
                       name="training")


def held_out_probabilities(net, pairs, normalization, device, target, stop):
    """``(probabilities, labels)`` of each ``(image, labels)`` pair, predicted by the tiled predictor."""
    predictor = Predictor(as_loaded_model(net, normalization, target), device=device)
    for image, labels in pairs:
        # colour last, as image files hold it: the predictor makes it grey for one-channel networks
        rgb = np.ndim(image) == np.ndim(labels) + 1 and np.shape(image)[:-1] == np.shape(labels) \
            and np.shape(image)[-1] in (3, 4) and net.in_channels in (1, 3, 4)
        probs = predict(predictor.model, image, predictor=predictor, stop=stop, rgb=rgb).probabilities
        if stop is not None and stop.is_set():
            raise PredictionCancelled()
        yield probs, labels


def validate(net, pairs: Sequence, normalization: dict = DEFAULT, device: str = "auto",
             postprocess: dict | None = None, target: str = "binary",
             stop: threading.Event | None = None) -> dict:
    """Mean :func:`~napari_unet.metrics.evaluate` of whole images ``(image, labels)``, predicted
    by the tiled predictor and turned into labels by ``probabilities_to_labels(**postprocess)``."""
    scores = [evaluate(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})))
              for probs, labels in held_out_probabilities(net, pairs, normalization, device, target, stop)]
    return mean_metrics(scores)


def error_maps(net, triples: Sequence, normalization: dict = DEFAULT, device: str = "auto",
               postprocess: dict | None = None, target: str = "binary",
               stop: threading.Event | None = None) -> list:
    """For each ``(image, labels[, reviewed])``: where ``net`` (with ``postprocess``) gets the
    objects wrong (:func:`~napari_unet.training.focus.error_map`)."""
    from .focus import error_map

    pairs = [(t[0], t[1]) for t in triples]
    return [error_map(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})),
                      triple[2] if len(triple) > 2 else None)
            for (probs, labels), triple in zip(held_out_probabilities(net, pairs, normalization, device, target,
                                                                      stop), triples)]


def tune_postprocess(net, pairs: Sequence, normalization: dict = DEFAULT, device: str = "auto",
                     target: str = "binary", stop: threading.Event | None = None) -> tuple[dict, list]:
    """The post-processing (threshold, minimum size, splitting) that scores best on the held-out
    ``(image, labels)`` pairs, each predicted once: ``(settings, table)`` of
    :func:`~napari_unet.inference.postprocess.choose_postprocess`."""
    from ..inference.postprocess import choose_postprocess

    return choose_postprocess(list(held_out_probabilities(net, pairs, normalization, device, target, stop)), target,
                              stop=stop)
