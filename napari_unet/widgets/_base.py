"""What every dock widget of the plugin does the same way: load PyTorch off the Qt thread, run one
job at a time in a thread worker with napari's progress bar and a Cancel, and report errors.

A subclass builds its controls, calls :meth:`JobWidget.start_job` with a generator function (the
job: it yields progress events and returns a result, in the worker thread) and a callback that
puts the result into layers (on the Qt thread), and overrides the ``_on_*`` hooks it needs.
"""

from __future__ import annotations

import logging
import threading

from napari.utils import progress
from napari.utils.notifications import show_error

from . import _workers
from ._workers import BACKGROUND_NICENESS, in_background, yield_to_the_ui  # noqa: F401  (used from here)
from ._dock import DockContainer
from ._layers import layer_meta  # noqa: F401  (widgets import it from here)

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


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


class JobWidget(DockContainer):
    """A scrolling dock (:class:`~._dock.DockContainer`) that runs one thread-worker job at a time.

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

    def __init__(self, viewer, warm_up: bool = True):
        super().__init__()
        self._viewer = viewer
        if viewer is not None:
            from ._layers import follow_renames

            follow_renames(viewer)  # the links between layers survive the user renaming one
        self._worker = None
        self._stop: threading.Event | None = None
        self._progress = None
        self._torch_ready = False
        # the dock's jobs stop, and their callbacks are dropped, when its Qt widget is destroyed
        self.lifetime = _workers.Lifetime()
        self.lifetime.attach(self.native)
        self.lifetime.on_close = self._close_progress
        if warm_up:  # PyTorch loads in a worker (once per process): opening the dock does not freeze napari
            _workers.warm_up(self._torch_loaded, self.lifetime)

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
                  stop: threading.Event | None = None, **texts):
        """Run the generator function ``job`` in a thread worker; its yielded events go to
        :meth:`_on_progress`, its return value to ``on_result`` (Qt thread), errors to the status
        line and napari's notifications. ``stop`` (a new event if None) is what Cancel sets.
        ``texts`` (``job_name``, ``cancelled_message``, ``cancelling_message``) replace the dock's
        own for this job only (an export run by a dock says that it is an export)."""
        for key, value in texts.items():
            if key not in ("job_name", "cancelled_message", "cancelling_message"):
                raise TypeError(f"start_job() got an unexpected keyword argument {key!r}")
            setattr(self, key, value)
        self._job_texts = tuple(texts)
        self._stop = stop or threading.Event()
        self._progress = progress(total=total, desc=description)
        self._worker = _workers.start(
            job, lifetime=self.lifetime, stop=self._stop, yielded=self._on_progress, returned=on_result,
            errored=lambda exc: self.report_error(error_message(exc, self.job_name)), finished=self._job_finished)
        self._on_job_started()
        return self._stop

    def _close_progress(self):
        """The dock is gone: napari's progress bar of its job goes too."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None

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

    def _check_inputs(self):
        """Hook: what a new job needs from the controls (e.g. ``(layer, data, model)``), or
        ``ValueError`` saying what is wrong."""
        raise NotImplementedError

    def _ready_to_start(self):
        """What :meth:`_check_inputs` gives, for a new job, or None: a job runs, or the inputs are
        refused (the message is shown)."""
        if self.running:
            return None
        self.ensure_torch()
        try:
            return self._check_inputs()
        except ValueError as exc:
            self.report_error(str(exc))
            return None

    def run_or_cancel(self, run) -> None:
        """A Run / Cancel button's click: ask the running job to stop, else ``run()``."""
        if self.running:
            self.cancel()
        else:
            run()

    @property
    def running(self) -> bool:
        """A job of this dock runs (docks with more to wait for extend it)."""
        return self.job_running

    def _image_choices(self, _widget=None):
        """The viewer's images a model may run on (an Image combo box's choices)."""
        from ._layers import input_images

        return input_images(self._viewer)

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
        for key in getattr(self, "_job_texts", ()):  # the dock's own texts again
            self.__dict__.pop(key, None)
        self._job_texts = ()

    def _on_job_started(self):
        """Hook: the job has started (turn Run into Cancel...)."""

    def _on_job_finished(self):
        """Hook: the job has ended, however (turn Cancel back into Run...)."""

    def report_error(self, message: str):
        self.status.value = message
        show_error(message)
