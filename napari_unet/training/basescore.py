"""The base model scored on a user's corrections: the bar its fine-tuned weights must beat, and,
when they do not, the post-processing it is saved with (:class:`~.finetune.FinetuneRun`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BaseScore:
    """The base model scored on the corrections: before training on the held-out part, and, when it
    wins, on all the reviewed regions to choose what it keeps (:func:`base_postprocess`)."""

    metrics: dict  # with its own post-processing, on the held-out part
    bar: float | None = None  # its best there, own settings or the grid's: what fine-tuned weights must beat
    postprocess: dict | None = None  # settings chosen on all reviewed regions, where they beat its own by the margin
    own_all: float | None = None  # AP@0.5 with its own settings on all reviewed regions
    best_all: float | None = None  # the grid's best there
    regions: str = "all the reviewed regions"  # where those were scored (the held-out part when none is whole)


def score_base(net, val, normalization, device, postprocess, target, stop, tune: bool) -> BaseScore:
    """The base model on the held-out regions ``val``, predicted once: its metrics with its own
    post-processing and (with ``tune``) the bar, its best AP@0.5 over the post-processing grid or
    its own settings. Fine-tuned weights are judged on ``val`` only (they trained on the rest)
    against that bar: both sides choose their settings on the same data."""
    from ..inference.postprocess import choose_postprocess

    items, metrics = _predicted(net, val, normalization, device, postprocess, target, stop)
    if not tune:
        return BaseScore(metrics)
    table = choose_postprocess(items, target, stop=stop)[1]
    return BaseScore(metrics, round(max(max(score for _, score in table), metrics["ap50"]), 4))


def base_postprocess(net, regions, normalization, device, postprocess, target, stop,
                     margin: float) -> tuple[dict | None, float, float]:
    """``(settings or None, AP@0.5 with its own, the grid's best)`` of a base model that beat its
    fine-tuned weights, on all the reviewed ``regions`` (it trained on none of them: four times
    the objects of the strips for 3 corrected frames). Its own settings were chosen on many
    images, so the grid's replace them (settings, not None) only by more than ``margin`` (one
    object's worth). Bundled ``unet`` on 3 Usiigaci frames, scored on 8 others: its own settings
    0.817, the strips' choice 0.786, all regions' choice 0.803 (the 3 frames prefer the shallower
    split, the 8 do not: benchmarks/README.md)."""
    from ..inference.postprocess import choose_postprocess

    items, own = _predicted(net, regions, normalization, device, postprocess, target, stop)
    best, table = choose_postprocess(items, target, stop=stop)
    own_all, best_all = round(own["ap50"], 4), round(max(score for _, score in table), 4)
    return (best if best_all > own_all + margin else None), own_all, best_all


def _predicted(net, pairs, normalization, device, postprocess, target, stop) -> tuple[list, dict]:
    """``((probabilities, labels) of each pair, mean metrics with postprocess)``."""
    from ..metrics import mean_metrics

    from . import validation

    items = list(validation.held_out_probabilities(net, pairs, normalization, device, target, stop))
    return items, mean_metrics([_evaluate(probs, labels, target, postprocess) for probs, labels in items])


def _evaluate(probs, labels, target, postprocess) -> dict:
    from ..inference.postprocess import probabilities_to_labels
    from ..metrics import evaluate

    return evaluate(labels, probabilities_to_labels(probs, target=target, **(postprocess or {})))


def min_gain(settings, val) -> float:
    """The validation AP@0.5 a fine-tuned model must gain over its base to be kept: the setting, or
    one object's worth (1 / the objects in ``val``: the held-out regions, or all the reviewed regions
    when the base's own settings are weighed, :func:`base_postprocess`). A few corrected images
    leave a few dozen held-out objects, cut from the very images trained on: a smaller gain is
    noise. (Bundled unet, 3 Usiigaci frames, 25 % strips: the base scored 0.896 there, fine-tuned
    weights up to 0.03 better there scored 0.72-0.76 on 8 other frames, the base 0.786.)"""
    if settings.min_gain is not None:
        return max(0.0, float(settings.min_gain))
    objects = sum(int(np.count_nonzero(np.unique(np.asarray(labels)))) for _, labels in val)
    return 1.0 / objects if objects else 0.0


def distinct(*values: float) -> list[str]:
    """``values`` written with 3 decimals, or as many more (up to 6) as it takes for the written
    numbers to compare as the values do: 0.9621 and 0.9615 as "0.9621" and "0.9615", not both "0.962"."""
    def order(numbers):
        return [np.sign(round(a - b, 9)) for a in numbers for b in numbers]  # float noise is no difference

    for digits in (3, 4, 5, 6):
        shown = [f"{v:.{digits}f}" for v in values]
        if order([float(x) for x in shown]) == order(values):
            return shown
    return [f"{v:.3f}" for v in values]
