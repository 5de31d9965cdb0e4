"""A training set on disk: the user's corrected masks, kept safe (no Qt, no torch).

Layout of a training-set folder::

    index.json           {"format": "napari-unet-training-set", "version": 1, "entries": [...]}
    images/<name>.tif    the image (as the layer holds it: (H, W), (H, W, C) RGB or (C, H, W))
    masks/<name>.tif     the corrected instance labels (uint16 or uint32)
    reviewed/<name>.tif  uint8, 1 where somebody checked the labels (0: ignored by the loss)

Every file is written atomically (temporary file, fsync, rename), so a crash, a kill or a full
disk mid-write leaves the previous version of that file readable. :meth:`TrainingSet.update`
(the widgets' autosave while the user paints) never writes over the files the index points to:
it writes the new masks and reviewed region as new revisions (``masks/<name>@<n>.tif``), then
the index, which is the one write that switches the entry over, then removes the old revisions.
A kill at any point leaves the entry's previous pair or its new pair, never one of each; files
of an update that never reached the index are removed the next time the folder is opened.
Changes go through a lock per folder, held across threads and processes (an ``fcntl``/``msvcrt``
lock on ``.lock``), and re-read the index first, so an autosave in a worker thread, an "Add" on
the Qt thread and another napari or ``napari-unet train`` on the same folder never drop each
other's entries.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .inputs import STORED_LABELS, check_instance_labels, spatial_shape
from .io import atomic_write, write_tif

__all__ = ["FORMAT", "VERSION", "Entry", "TrainingSet", "check_labels", "safe_name", "spatial_shape"]

FORMAT = "napari-unet-training-set"
VERSION = 1
LOCK_FILE = ".lock"

_locks: dict[Path, "FolderLock"] = {}
_locks_guard = threading.Lock()


def _remove_quietly(path: Path) -> None:
    """Remove a file of ours if it is there; a folder that cannot be changed (read-only: Linux says
    so even for a file that does not exist) only leaves a stray revision, removed on a later open."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class FolderLock:
    """A re-entrant lock on a training-set folder: a thread lock within this process, and an OS
    file lock on ``<folder>/.lock`` against other processes (skipped where the folder is read-only
    or the file system has no locks)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._thread = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self):
        self._thread.acquire()
        if self._depth == 0:
            self._fd = _lock_file(self.folder / LOCK_FILE)
        self._depth += 1
        return self

    @property
    def held(self) -> bool:
        """This process holds the OS lock on the folder (other processes wait for it)."""
        return self._fd is not None

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            _unlock_file(self._fd)
            self._fd = None
        self._thread.release()


def _lock_file(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock_file(fd: int) -> None:
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _folder_lock(folder: Path) -> FolderLock:
    """One lock per training-set folder, shared by every TrainingSet object of this process."""
    key = folder.resolve()
    with _locks_guard:
        return _locks.setdefault(key, FolderLock(key))


@dataclass
class Entry:
    """One image of a training set (paths relative to the folder)."""

    name: str
    shape: list  # the labels' shape
    source: str = ""  # where the image came from (layer name, file, plane)
    added: str = ""
    updated: str = ""
    reviewed_fraction: float = 0.0
    objects: int = 0
    extra: dict = field(default_factory=dict)
    revisions: dict = field(default_factory=dict)  # masks / reviewed: how many times rewritten

    @property
    def files(self) -> dict[str, str]:
        return {kind: self.file(kind, self.revisions.get(kind, 0)) for kind in ("images", "masks", "reviewed")}

    def file(self, kind: str, revision: int = 0) -> str:
        """The path of revision ``revision`` of this entry's ``kind`` file ('@' is never in a name)."""
        return f"{kind}/{self.name}.tif" if revision == 0 else f"{kind}/{self.name}@{revision}.tif"


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-_.``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "image"
    return name[:80]


def check_labels(labels, shape=None, what: str = "labels") -> np.ndarray:
    """Instance labels as a non-negative integer array (uint16, or uint32 for ids above 65535),
    of ``shape`` when given; ``ValueError`` says what is wrong (the rules:
    :func:`napari_unet.inputs.check_instance_labels` with :data:`~napari_unet.inputs.STORED_LABELS`)."""
    return check_instance_labels(labels, STORED_LABELS, what=what, shape=shape)


class TrainingSet:
    """A folder of (image, corrected labels, reviewed region) triples with a JSON index."""

    def __init__(self, folder: str | Path, create: bool = True):
        self.folder = Path(folder).expanduser()
        self._lock = _folder_lock(self.folder)
        index = self.folder / "index.json"
        if not index.exists():
            if not create:
                raise ValueError(f"{self.folder} is not a training set (no index.json).")
            self._make_folder()
        with self._lock:  # (the lock file is in the folder: it exists by now)
            if index.exists():  # also when another process made the training set since the check above
                self.entries = self._read_index()
                self._remove_unfinished()
            else:
                self.entries = []
                self._write_index()

    @classmethod
    def open_existing(cls, folder: str | Path) -> "TrainingSet":
        """The training set in ``folder``, which must exist and hold at least one entry;
        ``ValueError`` that says which is not so."""
        ts = cls(folder, create=False)
        if not len(ts):
            raise ValueError(f"The training set {ts.folder} is empty: add corrections with the Correct widget.")
        return ts

    def _make_folder(self) -> None:
        """Make the folders of a new training set; ``ValueError`` (nothing made) when ``folder`` is
        a file or holds files of its own (also in images/ or masks/, as datasets have them: an
        entry of the same name would overwrite one), unless it became a training set meanwhile."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file, not a folder: choose a folder for the training set.")
        if self.folder.exists() and any(
                p.name not in ("images", "masks", "reviewed", LOCK_FILE) or (p.is_dir() and any(p.iterdir()))
                for p in self.folder.iterdir()) and not (self.folder / "index.json").exists():
            raise ValueError(f"{self.folder} holds other files: choose an empty or new folder for a new "
                             "training set, so nothing of yours is overwritten.")
        try:
            for kind in ("images", "masks", "reviewed"):
                (self.folder / kind).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"Cannot create the training set in {self.folder}: {exc.strerror}.") from None

    # -- index ---------------------------------------------------------------------------
    def _read_index(self) -> list[Entry]:
        index = self.folder / "index.json"
        try:
            data = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{index} is not a readable training-set index: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{index} is not a napari-unet training-set index.")
        try:
            return [Entry(**e) for e in data.get("entries", [])]
        except TypeError as exc:
            raise ValueError(f"{index} has an entry this version cannot read: {exc}") from None

    def _remove_unfinished(self) -> None:
        """Remove revision files that no index entry points to: an update killed before its index
        write. Under the lock that is never another process's update in progress; where the file
        system has no locks (some network shares), only files older than an hour go."""
        import time

        from .io import STALE_TEMP_SECONDS

        kept = {rel for e in self.entries for rel in e.files.values()}
        now = time.time()
        for kind in ("masks", "reviewed"):
            for path in (self.folder / kind).glob("*@*.tif"):
                if f"{kind}/{path.name}" not in kept:
                    try:
                        if self._lock.held or now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                            path.unlink()
                    except OSError:
                        pass

    def _refresh(self) -> None:
        """Re-read the index (under the folder's lock): another TrainingSet object, maybe in another
        thread, may have changed it since this one was opened."""
        if (self.folder / "index.json").exists():
            self.entries = self._read_index()

    def _write_index(self) -> None:
        data = {"format": FORMAT, "version": VERSION, "entries": [asdict(e) for e in self.entries]}
        text = json.dumps(data, indent=1)
        try:
            atomic_write(self.folder / "index.json", lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:
            raise ValueError(f"Cannot write {self.folder / 'index.json'}: {exc.strerror}.") from None

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"No entry {name!r} in the training set {self.folder}: it has {', '.join(self.names()) or 'none'}.")

    def unique_name(self, base: str) -> str:
        """``base`` made file-name-safe, with ``-2``, ``-3``... when taken. Names that differ only in
        case are taken too: macOS and Windows file systems would give them the same files."""
        base = safe_name(base)
        taken = {name.casefold() for name in self.names()}
        if base.casefold() not in taken:
            return base
        i = 2
        while f"{base}-{i}".casefold() in taken:
            i += 1
        return f"{base}-{i}"

    # -- files -----------------------------------------------------------------------------
    def _write(self, entry: Entry, kind: str, array: np.ndarray, rel: str | None = None) -> None:
        try:
            write_tif(self.folder / (rel or entry.files[kind]), array)
        except OSError as exc:
            raise ValueError(f"Cannot save {kind} of {entry.name!r} to {self.folder}: {exc.strerror}. "
                             "The previous version is kept.") from None

    def add(self, image, labels, reviewed=None, name: str = "image", source: str = "",
            channel_axis: int | None = None) -> Entry:
        """Store a new entry; ``reviewed`` defaults to everything. Returns the entry (its name may
        get a ``-2`` suffix so nothing already stored is overwritten)."""
        image = np.asarray(image)
        shape = spatial_shape(image, channel_axis)
        labels = check_labels(labels, shape)
        reviewed = self._check_reviewed(reviewed, labels.shape)
        now = dt.datetime.now().isoformat(timespec="seconds")
        with self._lock:
            self._refresh()
            entry = Entry(name=self.unique_name(name), shape=list(labels.shape), source=source, added=now,
                          updated=now, extra={"channel_axis": channel_axis} if channel_axis is not None else {})
            self._stats(entry, labels, reviewed)
            self._write(entry, "images", image)
            self._write(entry, "masks", labels)
            self._write(entry, "reviewed", reviewed.astype(np.uint8))
            self.entries.append(entry)
            self._write_index()
        return entry

    def update(self, name: str, labels=None, reviewed=None) -> Entry:
        """Rewrite the corrected labels and/or the reviewed region of entry ``name`` (autosave).
        Both are checked before anything is written."""
        with self._lock:
            self._refresh()
            entry = self.entry(name)
            shape = tuple(entry.shape)
            if labels is not None:
                labels = check_labels(labels, shape)
            if reviewed is not None:
                reviewed = self._check_reviewed(reviewed, shape)
            # new revisions beside the current files; the index write switches the entry over
            new: dict[str, int] = {}
            try:
                for kind, array in (("masks", labels), ("reviewed", reviewed)):
                    if array is not None:
                        new[kind] = entry.revisions.get(kind, 0) + 1
                        self._write(entry, kind, array.astype(np.uint8) if kind == "reviewed" else array,
                                    entry.file(kind, new[kind]))
                replaced = [entry.files[kind] for kind in new]
                entry.revisions.update(new)
                entry.updated = dt.datetime.now().isoformat(timespec="seconds")
                self._stats(entry, labels, reviewed)
                self._write_index()
            except BaseException:  # the index was not written: the entry keeps its previous pair
                for kind, revision in new.items():
                    _remove_quietly(self.folder / entry.file(kind, revision))
                self._refresh()
                raise
            for rel in replaced:
                _remove_quietly(self.folder / rel)
        return self.entry(name)

    def remove(self, name: str) -> None:
        """Forget entry ``name`` (its files are kept on disk, renamed with a ``.removed`` suffix)."""
        with self._lock:
            self._refresh()
            entry = self.entry(name)
            self.entries.remove(entry)
            self._write_index()
            for rel in entry.files.values():
                path = self.folder / rel
                if path.exists():  # never over the files of an entry removed before under the same name
                    kept, i = path.with_name(path.name + ".removed"), 2
                    while kept.exists():
                        kept, i = path.with_name(f"{path.name}.removed-{i}"), i + 1
                    path.replace(kept)

    def load(self, name: str):
        """``(image, labels, reviewed bool)`` of entry ``name``."""
        import tifffile

        with self._lock:  # the current revisions, never ones an autosave elsewhere is replacing
            self._refresh()
            entry = self.entry(name)
            try:
                image = tifffile.imread(self.folder / entry.files["images"])
                labels = tifffile.imread(self.folder / entry.files["masks"])
                reviewed = tifffile.imread(self.folder / entry.files["reviewed"]).astype(bool)
            except MemoryError:
                raise
            except Exception as exc:  # missing, truncated (a codec's own error), not a TIFF...
                raise ValueError(f"Entry {name!r} of {self.folder} cannot be read: {exc}") from None
        return image, labels, reviewed

    def triples(self, names=None, stop=None) -> list[tuple] | None:
        """The entries ``names`` (default: every entry) as ``(image, labels, reviewed)``, images with
        their channel axis first, read one entry at a time; None when ``stop`` (a
        ``threading.Event``) is set before an entry or after the last one (Cancel of a run)."""
        out = []
        for name in self.names() if names is None else names:
            if stop is not None and stop.is_set():
                return None
            image, labels, reviewed = self.load(name)
            axis = self.entry(name).extra.get("channel_axis")
            if axis is not None:
                image = np.moveaxis(image, axis, 0)
            out.append((image, labels, reviewed))
        return None if stop is not None and stop.is_set() else out

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_reviewed(reviewed, shape) -> np.ndarray:
        if reviewed is None:
            return np.ones(shape, bool)
        reviewed = np.asarray(reviewed)
        if tuple(reviewed.shape) != tuple(shape):
            raise ValueError(f"The reviewed region {reviewed.shape} does not match the labels {tuple(shape)}.")
        return reviewed > 0

    @staticmethod
    def _stats(entry: Entry, labels, reviewed) -> None:
        if reviewed is not None:
            entry.reviewed_fraction = round(float(reviewed.mean()), 4) if reviewed.size else 0.0
        if labels is not None:
            entry.objects = int(np.unique(labels[labels > 0]).size)
