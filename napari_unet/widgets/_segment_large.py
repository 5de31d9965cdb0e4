"""The Segment dock's large runs: layers of what :mod:`napari_unet.inference.largeview` computes.

A large image (lazy, or planes above 64 Mpx) is segmented block by block into a zarr store in a
temporary folder. Its labels layer is built in the worker as soon as the store exists, shown at
once (not editable while blocks are written) and refreshed at most every :data:`REFRESH_EVERY`
seconds; at the end it becomes editable (single-scale) and the probabilities layer, when asked
for, goes below it. The folders go away with their layers, or when napari exits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from napari.utils.notifications import show_info, show_warning

from ._layers import KEY, build_layer, keep_temporary, move_below, put_layer, release_temporary, temporary_folder

#: Seconds between two refreshes of a filling labels layer (at most).
REFRESH_EVERY = 0.5


@dataclass
class _Live:
    """The first event of a large run: its labels layer (zarr-backed, still filling) comes along."""

    progress: object
    layer: object


@dataclass
class _LargeReady:
    """A finished large run: the result and its probabilities layer (None unless asked for)."""

    segmentation: object
    probabilities: object


def large_job(predictor, data, settings: dict, stop, want_probabilities: bool, name: str, meta: dict,
              transform: dict):
    """Thread-worker job for a large image: yields the core's :class:`BlockProgress` events (the
    first wrapped in :class:`_Live` with the labels layer); returns a :class:`_LargeReady`, or None
    when cancelled."""
    from ..inference.largeview import LiveStart, segment_large_iter
    from ..jobs import PredictionCancelled, relay

    probs_folder = temporary_folder() if want_probabilities else None

    def layer_of(event):
        if not isinstance(event, LiveStart):
            return event
        live = event.labels
        keep_temporary(live.folder)
        layer = build_layer(live.data, "labels", name, {**meta, "temporary": str(live.folder), "store": str(live.path)},
                            multiscale=live.multiscale, **transform)
        return _Live(event.progress, layer)

    try:
        run = yield from relay(segment_large_iter(predictor, data, settings, stop, probs_folder), layer_of)
        probabilities = None
        if run.probabilities is not None:
            levels = run.probabilities
            probabilities = build_layer(levels if len(levels) > 1 else levels[0], "image",
                                        name.replace(" labels", " probabilities"),
                                        {**meta, "kind": "probabilities", "temporary": probs_folder},
                                        multiscale=len(levels) > 1, colormap="magma", blending="additive",
                                        contrast_limits=(0.0, 1.0), **transform)
        return _LargeReady(run.segmentation, probabilities)
    except BaseException as exc:
        if probs_folder:
            release_temporary(probs_folder)
        if isinstance(exc, PredictionCancelled):
            return None
        raise


def discard_probabilities(ready: _LargeReady) -> None:
    """A large result that is not shown: its probabilities' temporary folder goes at once (not
    when napari exits: it can hold gigabytes)."""
    if ready.probabilities is not None:
        folder = ready.probabilities.metadata.get(KEY, {}).get("temporary")
        if folder:
            release_temporary(folder)


def show_live(widget, event):
    """A progress event of a large run on the Qt thread: the first one's labels layer goes into the
    viewer; later ones refresh it now and then. Returns the plain progress event."""
    if isinstance(event, _Live):  # a large run's labels layer: shown while it fills
        widget._live = put_layer(widget._viewer, event.layer)
        widget._live.editable = False  # no brush strokes into blocks that are still being written
        widget._live_refreshed = time.perf_counter()
        return event.progress
    if widget._live is not None and getattr(event, "stage", "") in ("label", "number") \
            and time.perf_counter() - widget._live_refreshed > REFRESH_EVERY:
        widget._live.refresh()
        widget._live_refreshed = time.perf_counter()
    return event


def show_large_result(widget, ready: _LargeReady, layer, started: float):
    """A finished large run on the Qt thread: its labels layer made editable and selected, the
    status line, and the probabilities layer below the labels."""
    viewer = widget._viewer
    result, live = ready.segmentation, widget._live
    widget._live = None
    widget.last_result = result
    if live is None or live not in viewer.layers:  # removed by the user meanwhile (with its folder)
        discard_probabilities(ready)
        widget.status.value = "the result layer was removed while it was being filled; the result was discarded."
        return
    import zarr

    store = zarr.open_array(live.metadata[KEY]["store"], mode="r+")  # written while it filled: writable now
    if not live.multiscale:  # napari paints single-scale layers only: now into the store itself
        live.data = store
        live.editable = True
    else:  # Correct's 'Write into the full labels' writes corrected regions into it (its levels follow)
        live.data = [store] + list(live.data[1:])
    live.refresh()
    viewer.layers.selection.active = live
    n = int(sum(result.n_objects))
    where = live.metadata[KEY]["temporary"]
    widget.status.value = (f"{n} objects in {time.perf_counter() - started:.1f} s on {result.device}, "
                           f"{result.n_blocks} block(s) per plane. The labels are a zarr store in {where}, "
                           "removed with the layer or when napari closes: save the layer to keep it."
                           + "".join(f"\n{message}" for message in result.warnings))
    for message in result.warnings:
        show_warning(message)
    show_info(f"napari-unet: {n} objects found in '{layer.name}'.")
    if ready.probabilities is not None:
        move_below(viewer, put_layer(viewer, ready.probabilities), live)
        viewer.layers.selection.active = live
