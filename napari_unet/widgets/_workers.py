"""The plugin's worker threads: a pool of its own, one warm-up per process, and an end for every
job when its dock or napari closes.

* **A pool of our own.** ``napari.qt.threading`` workers start on Qt's *global* thread pool,
  which napari itself needs (its activity spinner scales images there). On a 2-core laptop
  that pool has 2 threads: two docks warming up PyTorch held both, and napari's main thread
  waited for a third for ever. The plugin's workers run on :func:`pool` instead.
* **One warm-up.** :func:`warm_up` imports what a first run needs once per process, however
  many docks open, and tells every dock that asked when it is done.
* **Every job ends with its dock.** :class:`Lifetime` belongs to a dock: when the dock's Qt
  widget is destroyed or taken out of the window (dock closed, viewer closed) it sets the stop
  events of the dock's jobs and drops their callbacks (they would touch deleted widgets). When
  the application quits, or the interpreter exits (a script that closes its viewer),
  :func:`shutdown` stops every job and waits for the workers to finish their clean-up, so no
  thread is left emitting signals from objects that Python is tearing down (that aborted the
  process).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
import threading
import time
from typing import Callable

from qtpy.QtCore import QEvent, QObject, QThread, QThreadPool, QTimer
from qtpy.QtWidgets import QApplication

log = logging.getLogger(__name__)

#: how much lower than napari's the scheduling priority of the plugin's worker threads is (Linux nice)
BACKGROUND_NICENESS = 10


def yield_to_the_ui() -> bool:
    """Lower the calling thread's scheduling priority (Linux: ``nice`` +10 for this thread only), so
    that on a busy CPU the Qt thread and napari's drawing run first and the viewer stays usable.

    Threads started from this one afterwards (PyTorch's OpenMP team for its first parallel work
    here) inherit the lower priority. A thread's nice value cannot be raised back without
    privileges, which does not matter for the worker pool's threads: they only run background
    jobs. Elsewhere (macOS, Windows) the priority is left as it is. Returns whether it changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        if now >= BACKGROUND_NICENESS:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICENESS)
        return True
    except OSError:  # not permitted (some sandboxes): run at the normal priority
        return False


def in_background(job):
    """``job`` (a function or generator function) run by a worker thread at the priority set by
    :func:`yield_to_the_ui`."""
    if inspect.isgeneratorfunction(job):
        def polite_generator(*args, **kwargs):
            yield_to_the_ui()
            return (yield from job(*args, **kwargs))
        return polite_generator

    def polite(*args, **kwargs):
        yield_to_the_ui()
        return job(*args, **kwargs)
    return polite


#: how long :func:`shutdown` waits for the workers (a warm-up's imports cannot be interrupted)
SHUTDOWN_TIMEOUT_S = 120.0

_pool: QThreadPool | None = None
_running: dict = {}  # token -> (stop event or None, worker) of every job started and not yet finished
_lock = threading.Lock()


def pool() -> QThreadPool:
    """The plugin's own thread pool (never ``QThreadPool.globalInstance()``)."""
    global _pool
    if _pool is None:
        _pool = QThreadPool()
        # enough for a warm-up, a job per dock and an autosave at once; threads wait for work,
        # they do not spin
        _pool.setMaxThreadCount(max(4, QThread.idealThreadCount()))
        _pool.setExpiryTimeout(30_000)
        atexit.register(shutdown)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(shutdown)
    return _pool


class Lifetime:
    """Whether a dock is still open; the stop events of its jobs.

    ``attach(native)`` ties it to the dock's Qt widget: when that widget is destroyed or taken out
    of its dock (napari's close button), every job of the dock is asked to stop and its callbacks
    are dropped.
    """

    def __init__(self):
        self.closed = False
        self._stops: set[threading.Event] = set()

    def attach(self, native, removal: bool = True) -> None:
        """Close with ``native``'s end: destroyed, or (``removal``) taken out of its dock."""
        native.destroyed.connect(self._destroyed_callback())
        if removal:
            self._removal_watch = _RemovalWatch(native, self)

    def _destroyed_callback(self):
        lifetime = self  # the closure holds this object, never the dying widget

        def destroyed(*_):
            lifetime.close()
        return destroyed

    on_close: Callable[[], None] | None = None  # what the dock lets go of when it closes

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stop in list(self._stops):
            stop.set()
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception as exc:  # closing must not raise into Qt's destructor
                log.warning("napari-unet: closing a dock: %s", exc)

    def guard(self, callback: Callable | None) -> Callable:
        """``callback`` that does nothing once the dock is gone."""
        def guarded(*args):
            if not self.closed and callback is not None:
                return callback(*args)
        return guarded


class _RemovalWatch(QObject):
    """Closes a :class:`Lifetime` when its dock's widget is taken out of the window.

    napari's x on a dock's title bar (``remove_dock_widget``) unparents the plugin's widget and
    deletes only the dock around it: the widget lives on while its jobs' callbacks hold it, so
    ``destroyed`` never comes, and a run went on unseen (and a second one could start from the
    dock opened again). A widget that had a parent and loses it is such a removal."""

    def __init__(self, native, lifetime: Lifetime):
        super().__init__(native)  # a child of the widget: it goes with it
        self._lifetime = lifetime
        self._had_parent = native.parent() is not None
        native.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._had_parent = True
            elif self._had_parent:
                self._lifetime.close()
        return False


def start(job, *, lifetime: Lifetime | None = None, stop: threading.Event | None = None,
          yielded=None, returned=None, errored=None, finished=None, background: bool = True):
    """Run ``job`` (a function or generator function, no arguments) in a worker of :func:`pool`.

    ``stop`` is the job's stop event (set when its dock closes or napari quits); the callbacks
    run on the Qt thread, and not at all once ``lifetime`` is closed. ``background``: lower the
    worker thread's priority (see :func:`~._base.yield_to_the_ui`). Returns the worker.
    """
    from napari.qt.threading import create_worker

    lifetime = lifetime or Lifetime()
    token = object()
    worker = create_worker(_tracked(in_background(job) if background else job, stop, token), _start_thread=False,
                           _ignore_errors=True)
    with _lock:
        if token in _running:
            _running[token] = (stop, worker)
    for signal, callback in (("yielded", yielded), ("returned", returned), ("errored", errored),
                             ("finished", finished)):
        if callback is not None and hasattr(worker, signal):
            getattr(worker, signal).connect(lifetime.guard(callback))
    if stop is not None:
        lifetime._stops.add(stop)
        if lifetime.closed:
            stop.set()
        worker.finished.connect(lambda: lifetime._stops.discard(stop))
    pool().start(worker)
    return worker


def _tracked(job, stop: threading.Event | None, token):
    """``job`` counted in :func:`running` from its start until it returns or raises (in the
    worker thread itself: the Qt thread may no longer process the worker's signals)."""

    def enter():
        with _lock:
            _running[token] = (stop, None)

    def leave():
        with _lock:
            _running.pop(token, None)

    enter()
    if inspect.isgeneratorfunction(job):
        def tracked_generator():
            try:
                return (yield from job())
            finally:
                leave()
        return tracked_generator

    def tracked():
        try:
            return job()
        finally:
            leave()
    return tracked


def running() -> int:
    """How many of the plugin's jobs are started and not yet finished."""
    with _lock:
        return len(_running)


def shutdown(timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
    """Ask every job to stop and wait (up to ``timeout`` s) for the workers to finish their
    clean-up. Returns whether they all finished."""
    with _lock:
        stops = [stop for stop, _ in _running.values() if stop is not None]
    for stop in stops:
        stop.set()
    if _pool is None:
        return True
    deadline = time.monotonic() + timeout
    while _pool.activeThreadCount() and time.monotonic() < deadline:
        _pool.waitForDone(50)  # releases the GIL: the workers finish their Python code meanwhile
    finished = _pool.activeThreadCount() == 0
    if finished:
        _close_abandoned()
    if not finished:
        log.warning("napari-unet: %d worker(s) still running after %.0f s", _pool.activeThreadCount(), timeout)
    return finished


def _close_abandoned() -> None:
    """Run the clean-up of generator jobs whose worker gave up on them while they were suspended
    at a ``yield`` (superqt's worker returns when emitting a progress event fails, and then never
    resumes the generator): closing it runs its ``finally`` blocks now, not at garbage collection."""
    with _lock:
        left = list(_running.values())
    for _, worker in left:
        generator = getattr(worker, "_gen", None)
        if generator is not None:
            try:
                generator.close()
            except Exception as exc:  # a clean-up that fails must not stop the others
                log.warning("napari-unet: a stopped job's clean-up failed: %s", exc)


# -- the warm-up, once per process ----------------------------------------------------------------
_warm_state = {"started": False, "done": False, "waiting": []}
WARM_UPS_STARTED = 0  # how many warm-ups this process started (one, however many docks open)


def warm_up_imports() -> None:
    """Import what a first prediction, fine-tuning or deep-supervision run imports (imports hold
    Python's GIL: paid here, in a worker, they do not stall the viewer during a run). PyTorch's
    shared libraries are loaded first with the GIL released (:mod:`napari_unet.sharedlibs`)."""
    from ..sharedlibs import preload_torch

    preload_torch()
    from .. import devices, modelfile, modelinfo  # noqa: F401
    from ..training import finetune  # noqa: F401
    from ..inference import estimate, large, predictor, pyramid, segment, supervision  # noqa: F401
    from ..inference import largeview, predictor_cache, review  # noqa: F401
    import numpy as np

    from ..scaling import resize_image

    resize_image(np.zeros((1, 8, 8), np.float32), (4, 4))  # skimage.transform, for models that resize
    from ..inference.postprocess import preload as preload_postprocess
    from ..training.trainer import preload as preload_training
    from ._layers import preload_layers

    preload_postprocess()
    preload_layers()
    preload_training()


def _units_ready() -> None:
    """Load pint's unit registry (napari's layers use it) on the Qt thread, ~0.1 s once: its lazy
    loading is not thread-safe, and the warm-up's first layer raced the viewer's own ("'pixel' is
    not defined in the unit registry")."""
    try:
        import pint

        pint.get_application_registry().pixel  # noqa: B018  (the attribute access loads it)
    except Exception as exc:  # a napari without pint: nothing to race
        log.debug("pint's registry: %s", exc)


def warm_up(callback: Callable[[], None], lifetime: Lifetime | None = None) -> None:
    """Call ``callback`` on the Qt thread once the process's warm-up is done (started by the
    first caller; later callers wait for the same one, or are called back at once)."""
    lifetime = lifetime or Lifetime()
    callback = lifetime.guard(callback)
    if _warm_state["done"]:
        QTimer.singleShot(0, callback)
        return
    _warm_state["waiting"].append(callback)
    if _warm_state["started"]:
        return
    _warm_state["started"] = True
    _units_ready()
    global WARM_UPS_STARTED
    WARM_UPS_STARTED += 1

    def finished(*_):
        _warm_state["done"] = True
        waiting, _warm_state["waiting"] = _warm_state["waiting"], []
        for cb in waiting:
            cb()

    start(warm_up_imports, finished=finished, errored=lambda exc: log.warning("napari-unet warm-up: %s", exc))
