"""A block-wise run as a viewer shows it: the labels while they fill, the probabilities at the end.

:func:`segment_large_iter` drives :func:`~.large.segment_to_zarr_iter` for a viewer (the Segment
dock, in its worker thread): the run writes its labels in place, and the first event that names
the store comes wrapped in :class:`LiveStart` with a :class:`LiveLabels`, which a viewer shows at
once and refreshes while blocks are written. Planes with a side above
:data:`~.pyramid.PYRAMID_ABOVE` are shown through a :class:`~.pyramid.Pyramid` that each written
block updates, so redrawing reads only what is on screen. With a folder for the probabilities, the
run keeps them and :func:`foreground_levels` makes their foreground map (lazy at full resolution,
through a pyramid written here when the planes are large).

No Qt here: the caller builds the layers from :attr:`LiveLabels.data` and :attr:`LargeRun.probabilities`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..jobs import Progress, relay
from .pyramid import Pyramid, needs_pyramid

#: the stages whose events mean a block of final or block-local labels was just written
WRITTEN = ("label", "number")


@dataclass
class LiveLabels:
    """The labels store a run is filling, and its pyramid when the planes are large (else None)."""

    path: Path
    store: object
    pyramid: Pyramid | None = None

    @classmethod
    def open(cls, labels_path) -> "LiveLabels":
        """The store at ``labels_path`` (read-only), with a pyramid in a ``pyramid`` folder beside
        it when its planes are large enough to need one."""
        import zarr

        path = Path(labels_path)
        store = zarr.open_array(str(path), mode="r")
        pyramid = None
        if needs_pyramid(store.shape):
            pyramid = Pyramid(store, path.parent / "pyramid")
            pyramid = pyramid if pyramid.coarse else None
        return cls(path, store, pyramid)

    @property
    def folder(self) -> Path:
        """The (temporary) folder of the run's stores."""
        return self.path.parent

    @property
    def multiscale(self) -> bool:
        return self.pyramid is not None

    @property
    def data(self):
        """What a labels layer shows: the pyramid's levels, or the store itself."""
        return self.pyramid.levels if self.pyramid is not None else self.store

    def update(self, event) -> None:
        """Bring the pyramid up to date with the block an event says was written."""
        if self.pyramid is not None and getattr(event, "stage", "") in WRITTEN and event.region is not None:
            self.pyramid.update(event.region)


@dataclass
class LiveStart:
    """The first event of a run that names its labels store, with the store to show."""

    progress: Progress
    labels: LiveLabels


@dataclass
class LargeRun:
    """A finished run: its :class:`~.large.LargeSegmentation` and, when asked for, the levels of
    its foreground probability (one level, or the base and the coarser ones)."""

    segmentation: object
    probabilities: list | None = None


def segment_large_iter(predictor, data, settings: dict, stop: threading.Event | None = None,
                       probabilities_folder: str | None = None) -> Iterator:
    """Segment ``data`` block by block into a zarr store written in place (in a temporary folder
    the run makes); yields the run's :class:`~.large.BlockProgress` events, the first one with a
    store wrapped in :class:`LiveStart`, and keeps its pyramid up to date; returns a :class:`LargeRun`.

    ``settings``: the keyword arguments of :func:`~.large.segment_to_zarr_iter` (threshold,
    channel axis...). ``probabilities_folder``: where to keep the probabilities (and their pyramid);
    None: they are not kept. Cancelling (``stop``) raises :class:`~napari_unet.jobs.PredictionCancelled`.
    """
    from .large import segment_to_zarr_iter

    probs_path = None if probabilities_folder is None else Path(probabilities_folder) / "probabilities.zarr"
    gen = segment_to_zarr_iter(predictor.model, data, None, probs_path, predictor=predictor, stop=stop, **settings)
    live, last = None, None

    def show(event):
        nonlocal live, last
        last = event
        if live is None and event.labels_path:
            live = LiveLabels.open(event.labels_path)
            return LiveStart(event, live)
        if live is not None:
            live.update(event)
        return event

    result = yield from relay(gen, show)
    levels = None
    if probabilities_folder is not None:
        yield Progress(last.done, last.total, "preparing the probabilities layer")
        levels = foreground_levels(result.probabilities, tuple(result.labels.shape), predictor.model.spatial_dims,
                                   probabilities_folder, stop=stop)
    return LargeRun(result, levels)


def foreground_levels(store, shape: tuple, spatial_dims: int, folder, block: int | None = None,
                      stop: threading.Event | None = None) -> list:
    """The foreground probability of a large run's ``store`` (``(*planes, [K,] *spatial)``; the
    sum of the classes when there are several) as levels for a viewer: one lazy (dask) array of
    ``shape`` (the labels' shape), or with a pyramid under ``folder`` (written here, ``block``
    pixels at a time, default :data:`~.large.DEFAULT_BLOCK_2D`) when the planes are large.
    ``stop`` set: :class:`~napari_unet.jobs.PredictionCancelled` between two blocks."""
    import dask.array as da

    from ..jobs import PredictionCancelled

    axis = len(shape) - spatial_dims if store.ndim > len(shape) else None  # the class axis, if any

    def read(region):
        index = region if axis is None else region[:axis] + (slice(None),) + region[axis:]
        part = np.asarray(store[index])
        return part if axis is None else part.sum(axis=axis)  # foreground = sum of the classes

    base = da.from_zarr(store)
    if axis is not None:
        base = base.sum(axis=axis)
    if not needs_pyramid(shape):
        return [base]
    if block is None:
        from . import large  # read when called: a test may make blocks smaller

        block = large.DEFAULT_BLOCK_2D
    pyramid = Pyramid(base, Path(folder) / "pyramid", read=read, dtype=np.float32, shape=shape)
    for lead in np.ndindex(*shape[:-2]):
        for y in range(0, shape[-2], block):
            for x in range(0, shape[-1], block):
                if stop is not None and stop.is_set():
                    raise PredictionCancelled("cancelled while the probabilities' levels were written")
                pyramid.update(tuple(slice(i, i + 1) for i in lead) + (slice(y, y + block), slice(x, x + block)))
    return pyramid.levels
