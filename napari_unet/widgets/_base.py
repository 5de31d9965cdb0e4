"""What every dock widget of the plugin does the same way: load PyTorch off the Qt thread, run one
job at a time in a thread worker with napari's progress bar and a Cancel, and report errors.

A subclass builds its controls, calls :meth:`JobWidget.start_job` with a generator function (the
job: it yields progress events and returns a result, in the worker thread) and a callback that
puts the result into layers (on the Qt thread), and overrides the ``_on_*`` hooks it needs.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading

from magicgui.widgets import Container
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error

from ._layers import layer_meta  # noqa: F401  (widgets import it from here)

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


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


def device_line(choice: str, verb: str = "runs on") -> str:
    """``"runs on: cpu, 2 threads"`` for a device choice, or why it is not available."""
    from ..devices import resolve_device

    try:
        return f"{verb}: {resolve_device(choice)}"
    except ValueError as exc:
        return str(exc)


def error_message(exc: BaseException, what: str) -> str:
    """The user's message for a job's exception: input errors as they are, anything else named
    (and logged with its traceback) with the promise that nothing was changed."""
    if isinstance(exc, (ValueError, KeyError)):
        return str(exc.args[0]) if exc.args else str(exc)
    log.error("%s failed", what, exc_info=exc)
    return f"{what} failed ({type(exc).__name__}: {exc}). Nothing was changed."


class JobWidget(Container):
    """A labelled magicgui container that runs one thread-worker job at a time.

    Subclasses set ``status`` (a Label) before calling :meth:`start_job`, and may override
    :meth:`_on_torch_ready`, :meth:`_on_job_started`, :meth:`_on_job_finished` and
    :meth:`_on_progress`.
    """

    #: what the jobs are called in error messages ("Segmentation", "Fine-tuning"...)
    job_name = "The run"
    #: the status line after a cancel (None: keep what the job's result said)
    cancelled_message: str | None = "cancelled: nothing was changed"
    #: the status line while a cancelled job winds down
    cancelling_message = "cancelling…"

    def __init__(self, viewer, warm_up=None):
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self._stop: threading.Event | None = None
        self._progress = None
        self._torch_ready = False
        if warm_up is not None:  # PyTorch loads in a worker: opening the widget does not freeze napari
            worker = create_worker(in_background(warm_up), _start_thread=False)
            worker.returned.connect(self._torch_loaded)
            worker.start()
            self._warm_up = worker  # keep a reference while it runs

    def _torch_loaded(self, *_):
        self._torch_ready = True
        self._on_torch_ready()

    def ensure_torch(self):
        """Clicked within the first seconds: finish loading on the Qt thread, once."""
        if not self._torch_ready:
            self._torch_loaded()

    def _on_torch_ready(self):
        """Hook: PyTorch is imported (describe models, devices...)."""

    # -- one job at a time ------------------------------------------------------------------
    @property
    def job_running(self) -> bool:
        return self._worker is not None

    def start_job(self, job, on_result, description: str, total: int = 0,
                  stop: threading.Event | None = None):
        """Run the generator function ``job`` in a thread worker; its yielded events go to
        :meth:`_on_progress`, its return value to ``on_result`` (Qt thread), errors to the status
        line and napari's notifications. ``stop`` (a new event if None) is what Cancel sets."""
        self._stop = stop or threading.Event()
        worker = create_worker(in_background(job), _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(on_result)
        worker.errored.connect(lambda exc: self.report_error(error_message(exc, self.job_name)))
        worker.finished.connect(self._job_finished)
        self._worker = worker
        self._progress = progress(total=total, desc=description)
        self._on_job_started()
        worker.start()
        return self._stop

    def cancel(self):
        """Ask the running job to stop (it stops within about a second); changes nothing.

        Only the job's ``stop`` event is set: the job ends by itself, so its clean-up (``finally``
        blocks, e.g. removing a half-written store) runs in the worker before the widget is free.
        Aborting the worker instead would leave the job suspended at its last ``yield``, its
        clean-up postponed to garbage collection."""
        if self._worker is None:
            return
        self._stop.set()
        self.status.value = self.cancelling_message

    @property
    def cancelled(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _on_progress(self, event):
        """Default progress: ``event.done`` of ``event.total`` with ``event.message``."""
        pct = 100 * event.done / max(event.total, 1)
        self.status.value = f"{event.message}: {pct:.0f}%"
        self.update_progress(event.done, event.total, event.message)

    def update_progress(self, done: int, total: int, message: str = ""):
        bar = self._progress
        if bar is not None:  # last: updating napari's bar may process Qt events
            if bar.total != total:
                bar.total = total
            bar.n = done
            if message:
                bar.set_description(f"napari-unet: {message}")

    def _job_finished(self):
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._on_job_finished()
        if self.cancelled and self.cancelled_message:
            self.status.value = self.cancelled_message

    def _on_job_started(self):
        """Hook: the job has started (turn Run into Cancel...)."""

    def _on_job_finished(self):
        """Hook: the job has ended, however (turn Cancel back into Run...)."""

    def report_error(self, message: str):
        self.status.value = message
        show_error(message)
