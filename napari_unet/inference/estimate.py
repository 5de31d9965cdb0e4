"""The objects' size in an image, estimated from first passes of the model (no labels needed).

A model that declares the object diameter it works at (``input.object_diameter``, see
:mod:`napari_unet.scaling`) segments well only when the image is resized so that its objects
reach that size. Without labels to measure, the size is found as Cellpose refines its estimate:
segment at a first scale, measure the median diameter of what was found (in image pixels), resize
so that this diameter becomes the network's, and repeat until the measurement settles
(:data:`MAX_PASSES` at most). At a scale far too small the network finds nothing, and the next
pass tries a larger one. At a scale far too large it cuts each object into pieces about its own
size, which looks settled: so a settled size is checked once at half the scale, and when objects
measure much larger there (:data:`LARGER`), the passes go on from that size.

Measured with a model declaring 30 px (``benchmarks/bench_object_size.py --estimate``) on
held-out DSB2018 nuclei (10-49 px) and Usiigaci cells (41-69 px); see ``benchmarks/README.md``.
Each pass predicts a central crop of at most :data:`CROP_NETWORK_PX` pixels a side as the network
sees it, so an estimate costs a few small predictions whatever the image size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..jobs import Progress, run_to_end
from ..scaling import MAX_SCALE, MIN_SCALE, median_diameter
from .inputs import prepare_image
from .predictor import Predictor, take_predictor_arguments
from .predictor_cache import PredictorCache, PredictorSettings

#: predictions at most this many passes
MAX_PASSES = 6
#: at half the settled scale, objects measured this much larger mean the settled size was pieces
LARGER = 1.3
#: the measurement has settled when the next scale is within this factor of the last one
SETTLED = 1.1
#: side of the central crop predicted per pass, in pixels as the network sees them
CROP_NETWORK_PX = 768
#: the scales a pass may use (objects 8x larger to 4x smaller than the network's)
LOWEST, HIGHEST = max(MIN_SCALE, 1 / 8), min(MAX_SCALE, 4.0)


@dataclass
class SizeEstimate:
    """``diameter``: the objects' median diameter in image pixels (None: nothing found at any
    scale); ``passes``: ``(scale, median diameter found or None, objects)`` per pass."""

    diameter: float | None
    passes: list = field(default_factory=list)

    def describe(self) -> str:
        tried = ", ".join(f"{s:.2g}x: {n} objects" + (f" of {d:.0f} px" if d else "") for s, d, n in self.passes)
        if self.diameter is None:
            return f"no object found at any scale ({tried})"
        return f"objects of {self.diameter:.0f} px ({len(self.passes)} passes: {tried})"


def _central_crop(plane: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` window of ``plane`` ``(C, H, W)`` (all of it when smaller)."""
    h, w = plane.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.asarray(plane[..., top:top + side, left:left + side])


#: the bundled size estimators' predictors, one per device (loaded on first use)
_ESTIMATORS = PredictorCache(2)


def _estimator(predictor: Predictor) -> Predictor:
    """The predictor whose passes estimate the size: the model's own, or the one its config names
    (``input.size_estimator``, a bundled model trained on the same data at the same object size:
    the bundled family measures with ``unet``, whose estimates were measured to hold on cells too,
    where the smaller variants' own passes drift to fragments; ``benchmarks/bench_size_estimate.py``)."""
    name = predictor.model.config["input"].get("size_estimator")
    if not name or name == predictor.model.name:
        return predictor
    from ..catalog import bundled_models

    if name not in bundled_models():
        return predictor  # a size estimator that is not installed: the model's own passes
    # loaded once per device, not again for every image of a batch or every click on Estimate
    return _ESTIMATORS.get(PredictorSettings(name, device=str(predictor.device.device)))


def shown_plane(shape, position, rgb: bool = False, channel_axis: int | None = None) -> int | None:
    """The plane of a stack of planes (``shape`` ``(Z, H, W)``, no channels) at data coordinate
    ``position`` along its first axis (the plane a viewer shows), clamped to the stack; None for
    other layouts or a position that is not a number (:func:`estimate_diameter_iter` then measures
    the middle plane)."""
    if len(shape) != 3 or rgb or channel_axis is not None or shape[0] <= 1:
        return None
    try:
        return int(min(max(round(float(position)), 0), shape[0] - 1))
    except (TypeError, ValueError, OverflowError):
        return None


def estimate_diameter_iter(model, image, *, channel_axis: int | None = None, rgb: bool = False,
                           plane: int | None = None, stop: threading.Event | None = None,
                           predictor: Predictor | None = None, **predictor_kwargs) -> Iterator[Progress]:
    """Yield :class:`Progress` per pass; return a :class:`SizeEstimate` of ``image``'s objects.

    ``image`` as for :func:`~napari_unet.inference.predictor.predict_iter` (2D models; a stack is
    measured on ``plane``, by default its middle one). The passes run the model, or the bundled
    model its config names as ``input.size_estimator``. Raises ``ValueError`` for a model that
    declares no object size (it takes images at their own size: there is nothing to estimate).
    """
    from .segment import segment_iter

    if predictor is None:
        predictor = Predictor(model, **take_predictor_arguments(predictor_kwargs))
    lm = predictor.model
    if not lm.object_diameter:
        raise ValueError(f"'{lm.name}' declares no object size: it takes images at their own size, so there is "
                         "no size to estimate.")
    predictor = _estimator(predictor)
    lm = predictor.model
    network = lm.object_diameter
    prepared = prepare_image(image, lm.spatial_dims, lm.in_channels, channel_axis, rgb)
    index = prepared.n_planes // 2 if plane is None else int(plane)
    if not 0 <= index < prepared.n_planes:
        raise ValueError(f"plane {index} is outside the image's {prepared.n_planes} planes.")
    source = prepared.plane(index)  # (C, H, W)
    lowest, highest = LOWEST, HIGHEST
    scale = float(np.clip(network / lm.image_object_diameter, lowest, highest))
    estimate = SizeEstimate(None)
    tried: set = set()  # the scales (rounded) measured

    def measure(at: float):
        crop = _central_crop(source, int(round(CROP_NETWORK_PX / at)))
        seg = run_to_end(segment_iter(lm, crop, channel_axis=0, predictor=predictor, stop=stop,
                                      diameter=network / at))
        found = median_diameter(seg.labels)
        estimate.passes.append((at, found, int(seg.labels.max())))
        tried.add(round(at, 3))
        return found

    checked = False
    while len(estimate.passes) < MAX_PASSES:
        n = len(estimate.passes)
        yield Progress(n, MAX_PASSES, f"estimating the object size: pass {n + 1} at {scale:.2g}x")
        found = measure(scale)
        if found is None:  # nothing at this scale: objects too small to see, or none; look larger, then smaller
            # (below the smallest scale tried: climbing from 1x to 4x has tried 2x, the half of 4x, on the way)
            options = [s for s in (min(highest, scale * 2), max(lowest, min(tried) / 2)) if round(s, 3) not in tried]
            if not options or estimate.diameter:
                break
            scale = options[0]
            continue
        estimate.diameter = found
        following = float(np.clip(network / found, lowest, highest))
        if max(following, scale) / min(following, scale) >= SETTLED and round(following, 3) not in tried:
            scale = following
            continue
        # settled. Objects much larger than the network's window are cut into pieces of about its size,
        # which also looks settled: half the scale shows them whole, and larger
        half = max(lowest, scale / 2)
        if checked or round(half, 3) in tried or len(estimate.passes) >= MAX_PASSES:
            break
        checked = True
        yield Progress(len(estimate.passes), MAX_PASSES, f"estimating the object size: checking at {half:.2g}x")
        larger = measure(half)
        if larger is None or larger < LARGER * found:
            break
        estimate.diameter = larger
        scale = float(np.clip(network / larger, lowest, highest))
        if round(scale, 3) in tried:
            break
    yield Progress(MAX_PASSES, MAX_PASSES, "estimating the object size: done")
    return estimate


def estimate_diameter(model, image, **kwargs) -> SizeEstimate:
    """Blocking form of :func:`estimate_diameter_iter`."""
    return run_to_end(estimate_diameter_iter(model, image, **kwargs))
