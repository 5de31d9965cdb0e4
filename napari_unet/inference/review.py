"""The Deep-supervision dock's tables and camera moves as plain data (no Qt).

* :func:`score_table`: each depth's Dice, AP@0.5 and objects, and the row of the best one.
* :func:`pruned_table`: one row per pruned run (time per megapixel, speed-up over the full network
  timed the same way, score), after the full network's row.
* :func:`view_of`: where a viewer's sliders and camera go to show a :class:`~.supervision.Region`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SCORE_COLUMNS = ["Dice", "AP@0.5", "objects"]
PRUNE_COLUMNS = ["ms / Mpx", "speed-up", "Dice", "AP@0.5"]


def score_table(scores) -> tuple[dict, int | None]:
    """``(table, best)``: a table (``data``, ``index``, ``columns``) of :class:`~.supervision.DepthScore`
    rows, rounded for reading, and the index of the best row (None when there are no scores)."""
    from .supervision import best_score

    if not scores:
        return {"data": [], "index": [], "columns": SCORE_COLUMNS}, None
    table = {"data": [[round(s.dice, 3), round(s.ap50, 3), s.n_objects] for s in scores],
             "index": [s.name for s in scores], "columns": SCORE_COLUMNS}
    return table, best_score(scores)


def _pruned_row(run, score, speed: str) -> list:
    return [round(run.ms_per_megapixel), speed, "–" if score is None else round(score.dice, 3),
            "–" if score is None else round(score.ap50, 3)]


def pruned_table(rows: Sequence, index: Sequence[str], run, score, full) -> dict:
    """The pruned-runs table (``data``, ``index``, ``columns``) with a row for ``run`` (a
    :class:`~.supervision.PrunedRun` and its score or None) added to ``rows`` / ``index`` (what the
    table holds). ``full``: the full network's run and score on the same image, timed the same way;
    its row comes first, once."""
    rows, index = [list(r) for r in rows], list(index)
    full_run, full_score = full
    if "full" not in index:
        rows.append(_pruned_row(full_run, full_score, "1.0x"))
        index.append("full")
    rows.append(_pruned_row(run, score, f"{full_run.ms_per_megapixel / run.ms_per_megapixel:.1f}x"))
    index.append(f"depth {run.depth}")
    return {"data": rows, "index": index, "columns": PRUNE_COLUMNS}


@dataclass
class View:
    """Where a viewer goes: slider values per viewer axis (the axes not displayed), the camera's
    centre (in world coordinates of the displayed axes) and its zoom."""

    points: dict[int, float]
    center: tuple[float, ...]
    zoom: float


def view_of(region, scale: Sequence[float], translate: Sequence[float], ndim: int, displayed: Sequence[int],
            canvas: Sequence[float], fill: float = 0.8) -> View:
    """The view that centres a :class:`~.supervision.Region` of a layer (``scale`` / ``translate``:
    its transform) on a canvas of ``canvas`` pixels, its block taking ``fill`` of the canvas'
    shorter side. ``ndim``: the viewer's axes (it may hold layers with more axes than this one);
    ``displayed``: the viewer's displayed axes."""
    scale, translate = np.asarray(scale, float), np.asarray(translate, float)
    world = np.asarray(region.center) * scale + translate
    offset = ndim - len(world)
    shown = [a - offset for a in displayed]
    points = {offset + axis: float(value) for axis, value in enumerate(world) if axis not in shown}
    center = tuple(float(world[a]) for a in shown if a >= 0)
    n_planes = len(region.plane)
    extent = max((s.stop - s.start) * scale[n_planes + i] for i, s in enumerate(region.box))
    return View(points, center, fill * min(canvas) / max(extent, 1e-9))
