"""Where a fine-tuning run keeps what it needs to go on after an interruption (napari closed, a crash),
and the run that keeps it (:func:`resuming_finetune_iter`)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..catalog import user_model_dir


@dataclass
class Resumable:
    """Where a run keeps its state so that it can be resumed after an interruption (napari closed,
    a crash): ``checkpoint`` (the trainer's state, written after every epoch), ``path`` (the model
    file the run writes) and ``info`` (a small JSON file recording ``path``). A run is known by its
    :func:`run_key`: the same base model, corrections, settings and name find the same files."""

    checkpoint: Path
    info: Path
    path: Path | None  # None until the run has recorded it

    @property
    def exists(self) -> bool:
        return self.checkpoint.is_file() and self.path is not None

    def record(self, path: Path) -> None:
        import json

        from ..io import atomic_write

        self.path = Path(path)
        text = json.dumps({"path": str(self.path), "started": dt.datetime.now().isoformat(timespec="seconds")})
        atomic_write(self.info, lambda tmp: Path(tmp).write_text(text))

    def forget(self) -> None:
        for file in (self.checkpoint, self.info):
            file.unlink(missing_ok=True)


#: resume states older than this are removed when a new run starts (their runs were abandoned)
RESUME_MAX_AGE_DAYS = 14


def run_key(base, triples: Sequence, settings, name: str | None) -> str:
    """A short hash of what a fine-tuning run depends on: the base model (name, and its file's
    modification time), every image, label and reviewed array, the settings and the name."""
    import hashlib

    from ..catalog import resolve_model_path

    from .finetune import PATCHES

    # the default patches stand for None: a run interrupted before they changed is not resumed with others
    digest = hashlib.sha256(repr((str(base), name or "", sorted(asdict(settings).items()),
                                  sorted(PATCHES.items()))).encode())
    try:
        digest.update(str(resolve_model_path(str(base)).stat().st_mtime_ns).encode())
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # a model held in memory: its name stands for it
    for triple in triples:
        for array in triple:
            if array is None:
                digest.update(b"none")
                continue
            array = np.ascontiguousarray(np.asarray(array))
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:20]


def resumable(key: str, folder: Path | None = None) -> Resumable:
    """The resume files of the run ``key`` (in ``<model folder>/.resume``; old ones are cleared)."""
    import json

    folder = Path(folder) if folder is not None else user_model_dir() / ".resume"
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - RESUME_MAX_AGE_DAYS * 86400
    for old in folder.glob("*"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass
    info = folder / f"{key}.json"
    path = None
    try:
        path = Path(json.loads(info.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Resumable(folder / f"{key}.resume", info, path)




def resuming_finetune_iter(base, triples: Sequence, settings, *, name: str | None = None, stop=None,
                           source: str = "", resume: bool = True, keep_state: Callable[[], bool] = lambda: False):
    """:func:`~napari_unet.training.finetune.finetune_iter` keeping the run's state after every
    epoch, so that a run with the same base model, corrections, settings and name (its
    :func:`run_key`) goes on from its last epoch when ``resume`` is on, and writes the same model
    file. ``keep_state()`` is asked when the run ends: True keeps the state (e.g. napari closed
    during the run), False (done, cancelled or failed) removes it. Yields the progress events and
    returns the result, with ``resumed`` saying whether it went on from an interrupted run."""
    from ..catalog import SUFFIX
    from ..trainingset import safe_name
    from .finetune import finetune_iter, unique_model_name

    try:
        state = resumable(run_key(base, triples, settings, name))
    except OSError:  # the model folder cannot be written: finetune_iter says so, in its words
        return (yield from finetune_iter(base, triples, settings, name=name, stop=stop, source=source))
    resuming = resume and state.exists
    if resuming:
        path = state.path
    else:
        state.forget()
        stem = Path(str(base)).name.removesuffix(SUFFIX)
        # finetune_iter refuses a taken or bundled name, as without resuming
        path = user_model_dir() / f"{safe_name(name) if name else unique_model_name(stem)}{SUFFIX}"
        state.record(path)
    try:
        result = yield from finetune_iter(base, triples, settings, path=path, overwrite=resuming, stop=stop,
                                          source=source, checkpoint=state.checkpoint, resume=resuming)
    finally:
        if not keep_state():
            state.forget()
    result.resumed = resuming
    return result
