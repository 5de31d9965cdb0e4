"""Saving corrections as they are made, for the Correct dock.

A corrected layer linked to a training-set entry (``metadata["napari_unet"]["entry"]``) is saved
again a second after the user's last edit (of it or of its reviewed layer), in a worker of the
dock (:func:`._workers.start` with the dock's :class:`~._workers.Lifetime`), one save at a time and
in the order the edits were made; and once more, at once, on the Qt thread when the viewer window
closes (:class:`CloseWatch`). A failed save leaves the previous files whole and the edits marked
unsaved: the next edit (or closing the window) tries again.

Saves do not run as the dock's :class:`~._base.JobWidget` job: that slot holds one cancellable job
with a progress bar (the weight map), and a save must neither wait for it nor be cancelled (a save
in progress is finished, also when napari quits).

Adding a layer to the training set runs in a worker too (:meth:`Autosave.begin_link`): edits made
while the entry is written are remembered and saved once the layer is linked to it, also when the
window closes first (closing waits for the entry).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer

from . import _workers
from ._layers import KEY, layer_meta

log = logging.getLogger(__name__)

#: how long after the last edit the edits are saved (ms)
AUTOSAVE_MS = 1000
#: how long closing the window waits for an entry being added to the training set (s)
LINK_WAIT_S = 120.0


class Link:
    """A corrected layer being added to the training set, in a worker: :meth:`finish` (from the
    worker) gives the metadata that links the layer to its entry, or None when the add failed."""

    def __init__(self, layer):
        self.layer = layer
        self.edited = False  # an edit came while the entry was written
        self.link: dict | None = None
        self.done = threading.Event()

    def finish(self, link: dict | None) -> None:
        self.link = link
        self.done.set()


class Autosave:
    """The unsaved edits of a viewer's corrected layers, and their saving.

    ``say(text)`` shows a line in the dock's status; ``report_error(text)`` shows an error.
    ``widget`` (the dock's Qt widget) is followed to its top-level window, whose closing saves.
    """

    def __init__(self, viewer, lifetime: _workers.Lifetime, say: Callable[[str], None],
                 report_error: Callable[[str], None], widget):
        self._viewer = viewer
        self._lifetime = lifetime
        self._say, self._report_error = say, report_error
        # the corrected layers with unsaved edits, by napari's unique_id (a dock's viewer is napari's
        # proxy, whose layers[name] is a new wrapper each time: id() of a layer is not the layer)
        self.dirty: set = set()
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self._autosave)
        self.saving = None  # the running save's worker
        self._write_lock = threading.Lock()  # one save at a time, in snapshot order
        self._links: dict = {}  # unique_id -> Link of the layers being added to the training set
        self._snapshots = 0  # number of the latest snapshot taken
        self._written = 0  # number of the latest snapshot written
        # the last second of edits is saved when the window closes: once docked, the watch follows
        # the dock's top-level window (QWidget.window(), no private napari attribute)
        self._close_watch = CloseWatch(self.flush_now, widget)

    def mark_dirty(self, layer) -> None:
        """``layer`` (a corrected layer or its reviewed layer) was edited: save its corrected layer
        a second after the last edit, if it is linked to a training-set entry."""
        meta = layer_meta(layer)
        if meta.get("kind") == "reviewed":
            owner = meta.get("corrections")
            if owner not in self._viewer.layers:
                return
            layer = self._viewer.layers[owner]
            meta = layer_meta(layer)
        link = self._links.get(layer.unique_id)
        if link is not None:
            if not link.done.is_set():  # saved once the entry is written and linked
                link.edited = True
                return
            self.end_link(link)  # written, not yet linked (the dock that added it was closed)
            meta = layer_meta(layer)
        if "entry" not in meta:
            return
        self.dirty.add(layer.unique_id)
        self.timer.start()  # restarts: saves a second after the last edit

    @property
    def pending(self) -> bool:
        """Edits not saved yet, or a layer being added to the training set."""
        return bool(self.dirty or self._links)

    def begin_link(self, layer) -> Link:
        """``layer`` is being added to the training set (in a worker, which calls the returned
        link's :meth:`Link.finish`); :meth:`end_link` links it on the Qt thread once the worker
        has finished (see :meth:`link_when_done`)."""
        link = Link(layer)
        self._links[layer.unique_id] = link
        return link

    def link_when_done(self, link: Link, worker) -> None:
        """Call :meth:`end_link` when ``worker`` (the add) finishes, also when the dock that
        started it has closed meanwhile (the saves' lifetime is napari's, not the dock's). A worker
        that finished before this was connected has finished its link already: linked at once."""
        worker.finished.connect(self._lifetime.guard(lambda *_: self.end_link(link)))
        if link.done.is_set():
            QTimer.singleShot(0, self._lifetime.guard(lambda: self.end_link(link)))

    def end_link(self, link: Link) -> None:
        """Link the layer to its new entry (Qt thread, once the add's worker has finished) and save
        the edits made while the entry was written; nothing when the add failed, never ran, or was
        linked already."""
        if self._links.get(link.layer.unique_id) is not link:
            return
        del self._links[link.layer.unique_id]
        if link.link is not None:
            link.layer.metadata[KEY] = {**layer_meta(link.layer), **link.link}
        if link.edited:  # (a failed add: saved into the entry the layer was linked to before, if any)
            self.mark_dirty(link.layer)

    def _snapshot(self):
        """Copies of the edited layers (on the Qt thread), their ids, and a function that writes them."""
        jobs, ids = [], []
        for layer in list(self._viewer.layers):
            meta = layer_meta(layer)
            if layer.unique_id not in self.dirty or "entry" not in meta:
                continue
            reviewed = self._viewer.layers[meta["reviewed"]] if meta.get("reviewed") in self._viewer.layers else None
            jobs.append((meta["training_set"], meta["entry"], np.array(layer.data, copy=True),
                         None if reviewed is None else np.asarray(reviewed.data) > 0))
            ids.append(layer.unique_id)
        self.dirty.clear()
        self._snapshots += 1
        number = self._snapshots

        def write():
            from ..trainingset import TrainingSet

            with self._write_lock:
                if number < self._written:  # a newer snapshot is on disk already (saved at close)
                    return 0
                for folder, entry, labels, reviewed in jobs:
                    TrainingSet(folder, create=False).update(entry, labels=labels, reviewed=reviewed)
                self._written = number
            return len(jobs)

        return jobs, ids, write

    def _failed(self, exc, ids):
        self.dirty.update(ids)  # not saved: the next edit (or closing the window) tries again
        self._report_error(f"Autosave failed; your edits are still in the layer, the previous files are intact, "
                           f"and saving is tried again at your next edit: {exc}")

    def _autosave(self):
        """Snapshot the edited layers (Qt thread, a copy) and write them in a worker."""
        if self.saving is not None:
            self.timer.start()  # a save is still running: try again shortly
            return
        jobs, ids, write = self._snapshot()
        if not jobs:
            return
        # (no stop event: a save in progress is finished, also when napari quits)
        self.saving = _workers.start(write, lifetime=self._lifetime,
                                     returned=lambda n: self._say(f"saved {n} correction(s)"),
                                     errored=lambda exc: self._failed(exc, ids),
                                     finished=lambda: setattr(self, "saving", None))

    def flush(self):
        """Save pending edits now, in a worker."""
        if self.dirty:
            self.timer.stop()
            self._autosave()

    def owner_id(self, layer):
        """The unique id of the corrected layer that ``layer`` is or belongs to (its reviewed layer)."""
        meta = layer_meta(layer)
        if meta.get("kind") == "reviewed" and meta.get("corrections") in self._viewer.layers:
            return self._viewer.layers[meta["corrections"]].unique_id
        return layer.unique_id

    def flush_now(self, only=None):
        """Save pending edits on this thread, after any save in progress (when the window closes,
        or when ``only``, a layer, leaves the viewer); a layer being added to the training set
        (every one, or ``only``'s) is linked first, waiting for its entry."""
        wanted = None if only is None else self.owner_id(only)
        for link in list(self._links.values()):
            if wanted is not None and link.layer.unique_id != wanted:
                continue  # another layer's add goes on in its worker
            if not link.done.wait(LINK_WAIT_S):  # (left registered: linked if its entry is ever written)
                log.error("the training-set entry of %r was not written in %g s: edits made meanwhile are not "
                          "saved", link.layer.name, LINK_WAIT_S)
                continue
            self.end_link(link)
        self.timer.stop()
        if not self.dirty:
            return
        jobs, ids, write = self._snapshot()
        try:
            write()
        except (OSError, ValueError) as exc:
            self.dirty.update(ids)
            log.error("saving corrections on close failed: %s", exc)


class CloseWatch(QObject):
    """Calls ``callback`` when the top-level window of ``widget`` is about to close (the window is
    looked up whenever the widget is shown or moved to another parent, e.g. docked)."""

    def __init__(self, callback, widget):
        super().__init__()
        self._callback = weakref.WeakMethod(callback)  # the window must not keep a closed dock alive
        self._widget = widget
        self._window = lambda: None  # a weak reference: the dock must not keep napari's window alive
        widget.installEventFilter(self)

    def _follow_window(self):
        window, previous = self._widget.window(), self._window()
        if window is self._widget or window is previous:
            return
        if previous is not None:
            previous.removeEventFilter(self)
        window.installEventFilter(self)
        self._window = weakref.ref(window)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        # napari docks the widget into a dock widget first, then the dock into its window: a
        # reparenting of either (or a show) looks for the top-level window again
        if event.type() in (QEvent.Type.Show, QEvent.Type.ParentChange):
            self._follow_window()
        if obj is self._widget:
            return False
        callback = self._callback()
        if callback is not None and event.type() == QEvent.Type.Close:
            try:
                callback()
            except Exception:  # never block closing the window
                log.exception("saving corrections on close failed")
        return False
