"""Fault benchmark: the bad-input matrix and the fault cases, measured, one row each (issue 21, item 6).

Runs every case for real -- ``napari-unet`` subprocesses for the command line, the Python API in
this process (kills: writer subprocesses), and a few Segment-widget cases in a napari subprocess
(under the display, else ``xvfb-run -a``; skipped without either, or with ``--no-widgets``) -- and
prints one row per case: the surface, the case, the first
line of the message the user sees, the exit code (CLI) or exception type (API), and what was
lost, checked each time (input files and models unchanged by checksum, the previous model and
training set still load, no partial output left). A row whose outcome is not the promised one
is marked ``CRASH`` (a traceback, an unexpected exit code or exception type) or ``LOST: ...``;
the script then exits with code 1. It measures, it does not assert.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_faults.py [--no-widgets] [--keep]

Everything happens in a temporary folder (removed at the end; ``--keep`` keeps it); tiny
random-weight models, images of at most 1024 px: a few minutes on one thread. A full disk and a
read-only folder cannot be made without root's mount, and root writes into a chmod-ed folder
anyway: when running as root (or when ``chmod`` does not stop writes) both are simulated by
patching the file-system calls under the output folder (``simulated(...)`` below: ENOSPC when
a file is flushed, EROFS for any write, rename or delete there), in this process for the API and
in the ``napari-unet`` subprocess for the CLI.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import builtins  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261221
sys.dont_write_bytecode = True  # nothing written into the repository


# -- simulated file-system faults (also used by the CLI subprocesses, see CLI_WRAPPER) --------

def _under(path, root: str) -> bool:
    try:
        return os.path.abspath(os.fspath(path)).startswith(root.rstrip(os.sep) + os.sep) or \
            os.path.abspath(os.fspath(path)) == root.rstrip(os.sep)
    except TypeError:  # a file descriptor
        return False


@contextlib.contextmanager
def simulated(kind: str, root: str | os.PathLike):
    """``kind`` "enospc": every regular file under ``root`` fails to flush (``os.fsync``) with
    "No space left on device", as a full disk reports delayed writes; "erofs": every write,
    creation, rename or deletion under ``root`` fails with "Read-only file system"."""
    root = os.path.abspath(os.fspath(root))
    saved = {}

    def patch(module, name, new):
        saved[(module, name)] = getattr(module, name)
        setattr(module, name, new)

    if kind == "enospc":
        real_fsync = os.fsync

        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode) and _under(os.readlink(f"/proc/self/fd/{fd}"), root):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        patch(os, "fsync", fsync)
    elif kind == "erofs":
        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        real_open, real_os_open = builtins.open, os.open
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and _under(file, root):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & writes and _under(path, root):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guard(real, n_paths=1):
            def call(*args, **kwargs):
                if any(_under(p, root) for p in args[:n_paths]):
                    refuse(args[0])
                return real(*args, **kwargs)
            return call

        patch(builtins, "open", open_)
        patch(io, "open", open_)
        patch(os, "open", os_open)
        for name, n in (("mkdir", 1), ("unlink", 1), ("remove", 1), ("rmdir", 1), ("replace", 2), ("rename", 2),
                        ("chmod", 1), ("utime", 1)):
            patch(os, name, guard(getattr(os, name), n))
    else:
        raise ValueError(kind)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def chmod_stops_writes(folder: Path) -> bool:
    """Whether a chmod 0555 folder refuses writes here (not as root)."""
    probe = folder / "chmod-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_bytes(b"")
        return False
    except OSError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)


# The CLI run with a simulated fault: ``python -c CLI_WRAPPER KIND ROOT ARGS...`` is ``napari-unet ARGS...``
CLI_WRAPPER = textwrap.dedent("""
    import sys
    sys.dont_write_bytecode = True
    kind, root = sys.argv[1], sys.argv[2]
    sys.path.insert(0, {bench!r})
    from bench_faults import simulated
    from napari_unet.cli import main
    with simulated(kind, root):
        code = main(sys.argv[3:])
    sys.exit(code)
""").format(bench=str(Path(__file__).resolve().parent))


# -- rows ------------------------------------------------------------------------------------

@dataclass
class Row:
    surface: str
    case: str
    message: str
    outcome: str  # exit code, exception type, or what the call returned
    lost: str  # "nothing" or "LOST: ..."
    verdict: str = "ok"  # ok / CRASH / LOST
    seconds: float = 0.0

    @property
    def bad(self) -> bool:
        return self.verdict != "ok"


ROWS: list[Row] = []
TMP = [""]  # the temporary folder, left out of messages


def shorten(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    if TMP[0]:
        text = text.replace(TMP[0] + os.sep, "")
    return text if len(text) <= n else text[: n - 1] + "…"


def first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def add_row(surface, case, message, outcome, lost_problems, crash: str | None = None, seconds: float = 0.0):
    lost = "nothing" if not lost_problems else "LOST: " + "; ".join(lost_problems)
    verdict = "CRASH" if crash else ("LOST" if lost_problems else "ok")
    if crash:
        message = f"CRASH ({crash}): {message}"
    message = message[len("napari-unet: "):] if message.startswith("napari-unet: ") else message
    row = Row(surface, case, shorten(message), str(outcome), shorten(lost, 120), verdict, seconds)
    ROWS.append(row)
    print(f"  [{row.verdict:5s}] {surface:6s} {case}: {row.outcome} | {row.message} | {row.lost} ({seconds:.1f} s)",
          flush=True)
    return row


# -- checks of "what was lost" ---------------------------------------------------------------

def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under the given files / folders (hidden and temporary files included)."""
    out = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed(before: dict, after: dict) -> list[str]:
    names = sorted(set(before) | set(after))
    bad = [Path(n).name + (" deleted" if n not in after else " created" if n not in before else " changed")
           for n in names if before.get(n) != after.get(n)]
    return [f"{len(bad)} file(s) changed: {', '.join(bad[:3])}"] if bad else []


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic_write (``.<name>.<random>.tmp``) under ``folder``."""
    return sorted(folder.rglob(".*.tmp")) if folder.exists() else []


def array_unchanged(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def model_loads(path: Path) -> str | None:
    """None if ``path`` loads as a model with finite weights, else why not."""
    import torch

    from napari_unet.modelfile import load_model

    try:
        model = load_model(path)
    except Exception as exc:  # noqa: BLE001 -- measured, reported
        return f"{path.name} no longer loads ({type(exc).__name__}: {shorten(exc, 60)})"
    if not all(torch.isfinite(v.float()).all() for v in model.net.state_dict().values()):
        return f"{path.name} holds non-finite weights"
    return None


# -- fixtures --------------------------------------------------------------------------------

class Fixtures:
    def __init__(self, tmp: Path):
        import tifffile
        import torch

        from napari_unet.modelfile import make_config, save_model
        from napari_unet.models import build_model
        from napari_unet.synthetic import fluorescent_nuclei

        self.tmp = tmp
        self.models = tmp / "models"
        self.models.mkdir()

        def random_model(name, **arguments):
            torch.manual_seed(0)
            architecture = arguments.pop("architecture", "unet")
            net = build_model(architecture, **arguments)
            for module in net.modules():
                if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
            return save_model(self.models / f"{name}.safetensors", net, make_config(net, architecture))

        self.tiny = random_model("tiny", features=(8, 16, 32))
        self.two_channel = random_model("two-channel", features=(8, 16, 32), in_channels=2)
        self.model3d = random_model("tiny-3d", spatial_dims=3, features=(4, 8))
        good = self.tiny.read_bytes()
        bad = tmp / "bad-models"
        bad.mkdir()
        self.bad = {}
        self.bad["truncated"] = bad / "truncated.safetensors"
        self.bad["truncated"].write_bytes(good[: len(good) // 2])
        self.bad["empty file"] = bad / "empty.safetensors"
        self.bad["empty file"].write_bytes(b"")
        from safetensors.torch import save_file

        self.bad["foreign safetensors"] = bad / "foreign.safetensors"
        save_file({"w": torch.zeros(3)}, str(self.bad["foreign safetensors"]))
        self.bad["Keras .keras"] = bad / "model.keras"
        with zipfile.ZipFile(self.bad["Keras .keras"], "w") as z:
            z.writestr("config.json", "{}")
            z.writestr("model.weights.h5", b"\x89HDF")
        self.bad["torch.save .pt"] = bad / "model.pt"
        torch.save({"w": torch.zeros(3)}, self.bad["torch.save .pt"])
        self.bad["pickle"] = bad / "model.pkl"
        self.bad["pickle"].write_bytes(pickle.dumps({"w": [0.0]}, protocol=4))
        data = bytearray(good)
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
        start, end = header[name]["data_offsets"]
        data[8 + n + start:8 + n + end] = np.full((end - start) // 4, np.nan, np.float32).tobytes()
        self.bad["NaN weights"] = bad / "nan.safetensors"
        self.bad["NaN weights"].write_bytes(bytes(data))
        meta = json.loads(data[8:8 + n])
        meta["__metadata__"]["napari_unet"] = "{broken"
        raw = json.dumps(meta).encode()
        raw += b" " * (-len(raw) % 8)
        self.bad["corrupt config"] = bad / "config.safetensors"
        self.bad["corrupt config"].write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
        self.bad["missing file"] = bad / "gone.safetensors"
        self.bad["a folder"] = bad / "folder.safetensors"
        self.bad["a folder"].mkdir()

        # images and training data
        self.nuclei = [fluorescent_nuclei(shape=(192, 192), n_nuclei=12, seed=s) for s in range(2)]
        self.train = tmp / "train"
        for kind in ("images", "masks"):
            (self.train / kind).mkdir(parents=True)
        for s in range(2):
            image, labels = fluorescent_nuclei(shape=(64, 64), n_nuclei=5, seed=s)
            tifffile.imwrite(self.train / "images" / f"n{s}.tif", image)
            tifffile.imwrite(self.train / "masks" / f"n{s}.tif", labels)

    def training_set(self, name: str):
        """A fresh training set of the two 192 px nuclei images."""
        from napari_unet.trainingset import TrainingSet

        ts = TrainingSet(self.tmp / "sets" / name)
        for i, (image, labels) in enumerate(self.nuclei):
            ts.add(image, labels, name=f"nuclei {i}")
        return ts

    def train_copy(self, name: str) -> Path:
        folder = self.tmp / "train-copies" / name
        shutil.copytree(self.train, folder)
        return folder


# -- the CLI ---------------------------------------------------------------------------------

def cli_env(fx: Fixtures) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "NAPARI_UNET_MODEL_DIR": str(fx.tmp / "user-models")}


def napari_unet_command() -> list[str]:
    script = Path(sys.executable).parent / "napari-unet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "napari_unet.cli"]


def run_cli(fx, args, fault: tuple[str, Path] | None = None, timeout: float = 300):
    command = ([sys.executable, "-c", CLI_WRAPPER, fault[0], str(fault[1])] if fault else napari_unet_command())
    t = time.perf_counter()
    proc = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(fx), cwd=fx.tmp)
    return proc, time.perf_counter() - t


def cli_message(proc) -> str:
    """What the user reads first: the first error line, else the first warning, else the last line of output."""
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    for prefix in ("napari-unet: error", "Traceback", "napari-unet:"):
        hits = [line for line in err if line.startswith(prefix)]
        if hits:
            return hits[0] if prefix != "Traceback" else err[-1]
    hits = [line for line in err if "warning" in line]
    if hits:
        return hits[0]
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    return out[-1] if out else (err[-1] if err else "(nothing)")


def cli_case(fx, case, args, expect_rc, *, watch=(), out: Path | None = None, outputs=(), fault=None, extra=None):
    """Run ``napari-unet args``; ``watch``: files/folders that must not change; ``out``: the output
    folder, which must end up holding exactly ``outputs`` (names) and nothing else."""
    before = digest(*watch)
    proc, seconds = run_cli(fx, args, fault)
    problems = changed(before, digest(*watch))
    if out is not None:
        present = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
        missing = [n for n in outputs if n not in present]
        extra_files = [n for n in present if n not in outputs]
        if extra_files:
            problems.append(f"left in the output folder: {', '.join(extra_files[:3])}")
        if missing:
            problems.append(f"not written: {', '.join(missing)}")
    if extra is not None:
        problems += extra()
    crash = None
    if "Traceback" in proc.stderr:
        crash = "traceback"
    elif proc.returncode not in (expect_rc if isinstance(expect_rc, tuple) else (expect_rc,)):
        crash = f"exit code {proc.returncode}, expected {expect_rc}"
    return add_row("cli", case, cli_message(proc), f"exit {proc.returncode}", problems, crash, seconds)


def cli_cases(fx: Fixtures, chmod_works: bool):
    import tifffile
    from numpy.lib import format as npformat

    print("command line", flush=True)
    inputs = fx.tmp / "cli-in"
    inputs.mkdir()
    rng = np.random.default_rng(SEED)

    def image_file(name, write):
        path = inputs / name
        write(path)
        return path

    def npy_header_only(path, shape):
        with open(path, "wb") as f:
            npformat.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 1024)

    good = image_file("good.tif", lambda p: tifffile.imwrite(p, rng.random((64, 64)).astype(np.float32)))
    refused = [
        ("1D signal (.npy)", "signal.npy", lambda p: np.save(p, np.zeros(64)), fx.tiny, []),
        ("5D TCZYX array", "tczyx.npy", lambda p: np.save(p, np.zeros((1, 2, 3, 16, 16), np.float32)), fx.tiny, []),
        ("complex dtype", "fft.npy", lambda p: np.save(p, np.zeros((32, 32), complex)), fx.tiny, []),
        ("empty file (0 bytes)", "empty.tif", lambda p: p.write_bytes(b""), fx.tiny, []),
        ("truncated .npy", "cut.npy", lambda p: (np.save(p, np.zeros((64, 64))), p.write_bytes(p.read_bytes()[:200])),
         fx.tiny, []),
        ("pickled .npy (object array)", "objects.npy",
         lambda p: np.save(p, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True), fx.tiny, []),
        ("0 x 64 image", "zero-rows.npy", lambda p: np.save(p, np.zeros((0, 64), np.float32)), fx.tiny, []),
        ("huge: .npy header of 10^6 x 10^6 uint16 (1.8 TiB)", "huge.npy",
         lambda p: npy_header_only(p, (1_000_000, 1_000_000)), fx.tiny, []),
        ("2D image, 3D model", "img2d.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), fx.model3d,
         []),
        ("grey image, 2-channel model", "grey.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)),
         fx.two_channel, []),
        ("channel axis out of range", "ch.tif", lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint8)), fx.tiny,
         ["--channel-axis", "5"]),
    ]
    for case, name, write, model, extra in refused:
        path = image_file(name, write)
        out = fx.tmp / "cli-out" / safe(case)
        cli_case(fx, f"predict: {case}", ["predict", model, path, "-o", out, *extra], 2, watch=[path, model], out=out)

    for case, model in fx.bad.items():
        out = fx.tmp / "cli-out" / safe("model " + case)
        cli_case(fx, f"predict: model file {case}", ["predict", model, good, "-o", out], 2, watch=[good, fx.bad[case]],
                 out=out)

    accepted = [
        ("NaN pixels", "nan.tif", lambda p: tifffile.imwrite(
            p, np.where(np.eye(48, dtype=bool), np.nan, rng.random((48, 48))).astype(np.float32))),
        ("+-Inf pixels", "inf.npy", lambda p: np.save(p, np.where(np.eye(48, dtype=bool), np.inf, rng.random((48, 48))))),
        ("constant image", "flat.tif", lambda p: tifffile.imwrite(p, np.full((32, 32), 9, np.uint16))),
        ("1x1 image", "dot.npy", lambda p: np.save(p, np.ones((1, 1), np.float32))),
        ("uint64 near 2^63", "u64.npy", lambda p: np.save(p, (np.uint64(2**63) + np.arange(1024, dtype=np.uint64)
                                                              * np.uint64(2**40)).reshape(32, 32))),
        ("bool image", "mask.npy", lambda p: np.save(p, np.indices((32, 32)).sum(0) % 3 == 0)),
    ]
    for case, name, write in accepted:
        path = image_file(name, write)
        out = fx.tmp / "cli-out" / safe(case)
        cli_case(fx, f"predict: {case}", ["predict", fx.tiny, path, "-o", out], 0, watch=[path, fx.tiny], out=out,
                 outputs=[Path(name).stem + ".tif"])

    # a batch with one bad file: the others are written, exit 2 at the end
    batch = fx.tmp / "cli-batch"
    batch.mkdir()
    for i in range(2):
        tifffile.imwrite(batch / f"ok{i}.tif", rng.random((48, 48)).astype(np.float32))
    (batch / "broken.tif").write_bytes(b"II*\x00broken")
    out = fx.tmp / "cli-out" / "batch"
    cli_case(fx, "predict: batch of 3, one corrupt TIFF", ["predict", fx.tiny, batch / "ok0.tif", batch / "broken.tif",
                                                          batch / "ok1.tif", "-o", out], 2,
             watch=[batch, fx.tiny], out=out, outputs=["ok0.tif", "ok1.tif"])

    # output folders that cannot be written
    out = fx.tmp / "cli-out" / "name-taken"
    (out / "good.tif").mkdir(parents=True)
    cli_case(fx, "predict: output name taken by a folder", ["predict", fx.tiny, good, "-o", out], 2,
             watch=[good, fx.tiny])
    a_file = fx.tmp / "cli-out" / "a-file"
    a_file.write_text("mine")
    cli_case(fx, "predict: -o under a file", ["predict", fx.tiny, good, "-o", a_file / "out"], 2,
             watch=[good, fx.tiny, a_file])
    readonly = fx.tmp / "cli-out" / "read-only"
    readonly.mkdir()
    (readonly / "earlier.tif").write_bytes(b"an earlier result")
    if chmod_works:
        readonly.chmod(0o555)
        cli_case(fx, "predict: read-only output folder", ["predict", fx.tiny, good, "-o", readonly], 2,
                 watch=[good, fx.tiny, readonly], out=readonly, outputs=["earlier.tif"])
        readonly.chmod(0o755)
    else:
        cli_case(fx, "predict: read-only output folder (simulated EROFS)", ["predict", fx.tiny, good, "-o", readonly],
                 2, watch=[good, fx.tiny, readonly], out=readonly, outputs=["earlier.tif"], fault=("erofs", readonly))
    full = fx.tmp / "cli-out" / "full"
    full.mkdir()
    (full / "good.tif").write_bytes(b"yesterday's result")
    cli_case(fx, "predict: disk full while writing (simulated ENOSPC)", ["predict", fx.tiny, good, "-o", full], 2,
             watch=[good, fx.tiny, full], out=full, outputs=["good.tif"], fault=("enospc", full))

    # train: images / masks folders edited badly
    def train_args(folder, out_model, *extra):
        return ["train", fx.tiny, "--images", folder / "images", "--masks", folder / "masks", "-o", out_model,
                "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "32", "--batch-size", "2", "--keep-worse",
                *extra]

    breakages = [
        ("mask of another shape", lambda t: tifffile.imwrite(t / "masks" / "n1.tif", np.ones((32, 48), np.uint16))),
        ("negative mask ids", lambda t: tifffile.imwrite(t / "masks" / "n1.tif", -np.ones((64, 64), np.int32))),
        ("fractional masks", lambda t: tifffile.imwrite(t / "masks" / "n1.tif", np.full((64, 64), 0.5, np.float32))),
        ("mask missing for an image", lambda t: (t / "masks" / "n1.tif").unlink()),
        ("corrupt image", lambda t: (t / "images" / "n1.tif").write_bytes(b"II*\x00broken")),
    ]
    for case, breakage in breakages:
        folder = fx.train_copy(safe(case))
        breakage(folder)
        model_out = fx.tmp / "cli-out" / safe("train " + case)
        model_out.mkdir(parents=True)
        cli_case(fx, f"train: {case}", train_args(folder, model_out / "m.safetensors"), 2,
                 watch=[folder, fx.tiny], out=model_out)
    folder = fx.train_copy("base-pickle")
    cli_case(fx, "train: base model is a pickle", ["train", fx.bad["pickle"], "--images", folder / "images", "--masks",
                                                   folder / "masks", "-o", fx.tmp / "cli-out" / "never"], 2,
             watch=[folder, fx.bad["pickle"]])

    # train: training-set folders edited by hand
    for case, edit in training_set_edits():
        ts = fx.training_set("cli " + safe(case))
        edit(ts)
        model_out = fx.tmp / "cli-out" / safe("train-set " + case)
        model_out.mkdir(parents=True)
        cli_case(fx, f"train --training-set: {case}",
                 ["train", fx.tiny, "--training-set", ts.folder, "-o", model_out / "m", "--epochs", "1",
                  "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2"], 2,
                 watch=[ts.folder, fx.tiny], out=model_out)

    # train: the output model cannot be written at the end; the previous model there is kept
    for kind in ("enospc", "erofs"):
        folder = fx.train_copy(f"train-{kind}")
        model_out = fx.tmp / "cli-out" / f"train-{kind}"
        model_out.mkdir(parents=True)
        shutil.copy(fx.tiny, model_out / "m.safetensors")  # yesterday's model, to be replaced
        what = "disk full when the model is saved (simulated ENOSPC)" if kind == "enospc" else \
            "read-only model folder (simulated EROFS)"
        cli_case(fx, f"train: {what}", train_args(folder, model_out / "m.safetensors", "--no-validation"), 2,
                 watch=[folder, fx.tiny, model_out], out=model_out, outputs=["m.safetensors"], fault=(kind, model_out),
                 extra=lambda m=model_out / "m.safetensors": [p for p in [model_loads(m)] if p])

    # a loss that diverges for real (lr 1e20): says so, writes nothing half-trained over the previous model
    folder = fx.train_copy("train-nan")
    model_out = fx.tmp / "cli-out" / "train-nan"
    model_out.mkdir(parents=True)
    shutil.copy(fx.tiny, model_out / "m.safetensors")
    cli_case(fx, "train: loss turns NaN (--lr 1e20)",
             ["train", fx.tiny, "--images", folder / "images", "--masks", folder / "masks", "-o",
              model_out / "m.safetensors", "--epochs", "1", "--steps-per-epoch", "20", "--patch-size", "32",
              "--batch-size", "2", "--lr", "1e20", "--no-validation"], (0, 1),
             watch=[folder, fx.tiny], out=model_out, outputs=["m.safetensors"],
             extra=lambda m=model_out / "m.safetensors": [p for p in [model_loads(m)] if p])

    cli_interrupt_cases(fx)


def cli_interrupt_cases(fx: Fixtures):
    """Ctrl-C (SIGINT) at a random moment of ``predict`` and of ``train``."""
    import tifffile

    rng = np.random.default_rng(SEED + 1)
    source = fx.tmp / "cli-sigint"
    source.mkdir()
    big = source / "big.tif"
    tifffile.imwrite(big, np.tile(fx.nuclei[0][0], (6, 6))[:1024, :1024])
    out = fx.tmp / "cli-out" / "sigint-predict"
    (out).mkdir(parents=True)
    (out / "big.tif").write_bytes(b"yesterday's labels")
    before = digest(big, fx.tiny, out)
    delay = float(rng.uniform(0.3, 1.5))
    t = time.perf_counter()
    proc = subprocess.Popen(napari_unet_command() + ["predict", str(fx.tiny), str(big), "-o", str(out), "--tile-size",
                                                     "128"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(fx), cwd=fx.tmp)
    first = proc.stdout.readline()  # "model ... on cpu": the model is loaded, prediction starts
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, first + rest, err)
    problems = changed(before, digest(big, fx.tiny, out))
    if leftovers(out):
        problems.append("a partial output was left")
    crash = "traceback" if "Traceback" in err else (None if proc.returncode in (130, 0) else
                                                    f"exit code {proc.returncode}")
    add_row("cli", f"predict: Ctrl-C {delay:.2f} s into the prediction (1024² image, 128 px tiles)",
            cli_message(result) if proc.returncode else "finished before the signal", f"exit {proc.returncode}",
            problems if proc.returncode else [], crash, time.perf_counter() - t)

    folder = fx.train_copy("sigint-train")
    model_out = fx.tmp / "cli-out" / "sigint-train"
    model_out.mkdir(parents=True)
    shutil.copy(fx.tiny, model_out / "m.safetensors")
    before = digest(folder, fx.tiny)
    delay = float(rng.uniform(0.5, 3.0))
    t = time.perf_counter()
    proc = subprocess.Popen(napari_unet_command() + [
        "train", str(fx.tiny), "--images", str(folder / "images"), "--masks", str(folder / "masks"), "-o",
        str(model_out / "m.safetensors"), "--minutes", "2", "--patch-size", "32", "--batch-size", "2",
        "--no-validation"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(fx), cwd=fx.tmp)
    first = proc.stdout.readline()  # "training ... Ctrl-C stops and keeps the best model"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, first + rest, err)
    problems = changed(before, digest(folder, fx.tiny))
    problems += [p for p in [model_loads(model_out / "m.safetensors")] if p]
    problems += ["a partial model file was left"] if leftovers(model_out) else []
    crash = "traceback" if "Traceback" in err else (None if proc.returncode in (0, 1) else
                                                    f"exit code {proc.returncode}")
    add_row("cli", f"train: Ctrl-C {delay:.2f} s into training", cli_message(result), f"exit {proc.returncode}",
            problems, crash, time.perf_counter() - t)


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


# -- training sets edited by hand ------------------------------------------------------------

def training_set_edits():
    """(case, edit(TrainingSet)) for a training set of two entries."""
    import tifffile

    def entry_file(ts, kind, i=1):
        return ts.folder / ts.entry(ts.names()[i]).files[kind]

    return [
        ("index.json not JSON", lambda ts: (ts.folder / "index.json").write_text('{"format": "napari-unet-tr')),
        ("index.json of another format", lambda ts: (ts.folder / "index.json").write_text('{"format": "other"}')),
        ("a mask file deleted", lambda ts: entry_file(ts, "masks").unlink()),
        ("a mask of the wrong shape", lambda ts: tifffile.imwrite(entry_file(ts, "masks"),
                                                                  np.ones((64, 80), np.uint16))),
        ("an image file truncated", lambda ts: entry_file(ts, "images").write_bytes(
            entry_file(ts, "images").read_bytes()[:300])),
    ]


# -- the Python API --------------------------------------------------------------------------

def api_case(case, call, expect=(ValueError,), *, surface="api", check=None, watch=()):
    """Run ``call()``; a refusal must raise one of ``expect`` (None: must return). ``check(result
    or None)`` lists what was lost; ``watch``: files that must not change."""
    before = digest(*watch)
    t = time.perf_counter()
    result, exc = None, None
    try:
        result = call()
    except BaseException as e:  # noqa: BLE001 -- measured, reported
        if isinstance(e, KeyboardInterrupt):
            raise
        exc = e
    seconds = time.perf_counter() - t
    problems = changed(before, digest(*watch))
    if check is not None:
        problems += check(result)
    if exc is not None:
        message, outcome = first_line(exc) or type(exc).__name__, type(exc).__name__
        crash = None if expect is not None and isinstance(exc, expect) else "unexpected exception"
    else:
        message, outcome = (result if isinstance(result, str) else "returned"), "returned"
        crash = None if expect is None else f"no {'/'.join(e.__name__ for e in expect)} raised"
    return add_row(surface, case, message, outcome, problems, crash, seconds)


def api_cases(fx: Fixtures, chmod_works: bool):
    from napari_unet.finetune import FinetuneSettings, finetune_iter
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.inference.segment import segment_iter
    from napari_unet.modelfile import ModelFileError, load_model
    from napari_unet.trainingset import TrainingSet

    print("Python API", flush=True)
    model = load_model(fx.tiny)
    model3d = load_model(fx.model3d)
    rng = np.random.default_rng(SEED + 2)

    modified = []

    def segment(image, m=model, **kwargs):
        original = copy.deepcopy(image)
        seg = run_to_end(segment_iter(m, image, device="cpu", **kwargs))
        if isinstance(image, np.ndarray) and not array_unchanged(image, original):
            modified.append(1)
        warning = next((w for w in seg.prediction.warnings if "is unsure of" not in w), None)
        return f"labels {seg.labels.shape}, {int(seg.labels.max())} objects" + (f"; warning: {warning}" if warning
                                                                               else "")

    def refused(image, m=model, **kwargs):
        original = copy.deepcopy(image)
        try:
            run_to_end(segment_iter(m, image, device="cpu", **kwargs))
        finally:
            if isinstance(image, np.ndarray) and not array_unchanged(image, original):
                modified.append(1)
        return "segmented"

    def input_kept(_r):
        return ["the input array was modified"] if modified and not modified.clear() else []

    da = None
    with contextlib.suppress(ImportError):
        import dask.array as da
    refused_images = [
        ("segment: 0-d scalar", lambda: np.array(3.0), {}),
        ("segment: 1D signal", lambda: np.zeros(64), {}),
        ("segment: 5D TCZYX", lambda: np.zeros((1, 2, 3, 16, 16), np.float32), {}),
        ("segment: RGB without channel axis", lambda: np.zeros((64, 64, 3), np.uint8), {}),
        ("segment: complex dtype", lambda: np.zeros((32, 32), complex), {}),
        ("segment: text dtype", lambda: np.full((8, 8), "a"), {}),
        ("segment: ragged nested list", lambda: [[1, 2], [3]], {}),
        ("segment: empty 0 x 64", lambda: np.zeros((0, 64), np.float32), {}),
        ("segment: empty stack 0 x 16 x 16", lambda: np.zeros((0, 16, 16), np.uint8), {}),
        ("segment: channel axis out of range", lambda: np.zeros((32, 32)), {"channel_axis": 3}),
    ]
    for case, make, kwargs in refused_images:
        api_case(case, lambda make=make, kwargs=kwargs: refused(make(), **kwargs), check=input_kept)
    api_case("segment: 2D image, 3D model", lambda: refused(np.zeros((32, 32)), model3d), check=input_kept)
    if da is not None:
        huge = da.zeros((1_000_000, 1_000_000), dtype=np.uint16, chunks=4096)
        api_case("segment: huge dask array 10^6 x 10^6 (1.8 TiB)", lambda: refused(huge), expect=(ValueError,
                                                                                                   MemoryError))
    accepted_images = [
        ("segment: some NaN pixels", lambda: np.where(np.eye(48, dtype=bool), np.nan, rng.random((48, 48)))),
        ("segment: all NaN", lambda: np.full((32, 32), np.nan, np.float32)),
        ("segment: +-Inf only", lambda: np.where(np.eye(32, dtype=bool), np.inf, -np.inf)),
        ("segment: constant", lambda: np.full((32, 32), 7, np.uint16)),
        ("segment: 1x1", lambda: np.ones((1, 1))),
        ("segment: thin 1 x 200", lambda: rng.random((1, 200))),
        ("segment: float64 +-1.7e308", lambda: np.where(np.arange(32)[None, :] < 16, -1.7e308, 1.7e308)
         * np.ones((32, 1))),
        ("segment: float16", lambda: rng.random((48, 40)).astype(np.float16)),
        ("segment: bool", lambda: np.indices((32, 32)).sum(0) % 3 == 0),
    ]
    for case, make in accepted_images:
        api_case(case, lambda make=make: segment(make()), expect=None, check=input_kept)

    for case, path in fx.bad.items():
        api_case(f"load_model: {case}", lambda path=path: load_model(path), expect=(ModelFileError,),
                 watch=[path] if path.exists() else [])

    # training sets edited by hand
    for case, edit in training_set_edits():
        ts = fx.training_set("api " + safe(case))
        edit(ts)
        out = fx.tmp / "api-out" / safe(case)
        settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2,
                                    device="cpu", augment=False)

        def open_and_train(folder=ts.folder, out=out, settings=settings):
            triples = TrainingSet(folder, create=False).triples()
            return run_to_end(finetune_iter(fx.tiny, triples, settings, name="m", out_dir=out))

        api_case(f"TrainingSet + finetune_iter: {case}", open_and_train, watch=[ts.folder, fx.tiny],
                 check=lambda _r, out=out: [f"left in {out.name}: {p.name}" for p in out.rglob("*") if p.is_file()]
                 if out.exists() else [])

    ts = fx.training_set("api-add")
    image, labels = fx.nuclei[0]
    api_case("TrainingSet.add: labels of another shape", lambda: ts.add(image, labels[:100]), watch=[ts.folder])
    api_case("TrainingSet.add: NaN labels", lambda: ts.add(image, np.where(labels > 0, np.nan, 0.0)),
             watch=[ts.folder])
    a_file = fx.tmp / "api-a-file"
    a_file.write_text("mine")
    api_case("TrainingSet: folder is a file", lambda: TrainingSet(a_file), watch=[a_file])

    # finetune_iter refusals
    settings = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2,
                                device="cpu", augment=False)
    image, labels = fx.nuclei[0]
    out = fx.tmp / "api-out" / "finetune"

    def finetune(triples, out_dir=out, name="refused", **kwargs):
        return run_to_end(finetune_iter(fx.tiny, triples, settings, name=name, out_dir=out_dir, **kwargs))

    def nothing_in(folder):
        return lambda _r: [f"left: {p.name}" for p in folder.rglob("*") if p.is_file()] if folder.exists() else []

    api_case("finetune_iter: no training data", lambda: finetune([]), watch=[fx.tiny], check=nothing_in(out))
    api_case("finetune_iter: labels of another shape", lambda: finetune([(image, labels[:, :100], None)]),
             watch=[fx.tiny], check=nothing_in(out))
    api_case("finetune_iter: nothing marked reviewed",
             lambda: finetune([(image, labels, np.zeros(labels.shape, bool))]), watch=[fx.tiny], check=nothing_in(out))
    api_case("finetune_iter: too small to hold out", lambda: finetune([(image[:64, :64], labels[:64, :64], None)]),
             watch=[fx.tiny], check=nothing_in(out))
    api_case("finetune_iter: 2D labels, 3D base model",
             lambda: run_to_end(finetune_iter(fx.model3d, [(image, labels, None)], settings, name="r", out_dir=out)),
             watch=[fx.model3d], check=nothing_in(out))
    api_case("finetune_iter: out_dir under a file", lambda: finetune([(image, labels, None)], out_dir=a_file / "m"),
             watch=[fx.tiny, a_file])
    existing = fx.tmp / "api-out" / "existing"
    existing.mkdir(parents=True)
    shutil.copy(fx.tiny, existing / "taken.safetensors")
    api_case("finetune_iter: name of an existing model", lambda: finetune([(image, labels, None)], out_dir=existing,
                                                                           name="taken"),
             watch=[fx.tiny, existing])

    # output folders that cannot be written (or fill up) during the save
    triples = [(im, lab, None) for im, lab in fx.nuclei]
    quick = FinetuneSettings(minutes=None, epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, device="cpu",
                             augment=False, only_if_better=False)
    for kind in ("enospc", "erofs"):
        folder = fx.tmp / "api-out" / f"finetune-{kind}"
        folder.mkdir(parents=True)
        target = folder / "m.safetensors"
        shutil.copy(fx.tiny, target)  # the model this run replaces (as `napari-unet train -o` does)
        what = "disk full when the model is saved (simulated ENOSPC)" if kind == "enospc" else \
            "read-only model folder (simulated EROFS)"
        if kind == "erofs" and chmod_works:
            what = "read-only model folder"

        def run(kind=kind, folder=folder, target=target):
            fault = contextlib.nullcontext() if kind == "erofs" and chmod_works else simulated(kind, folder)
            if kind == "erofs" and chmod_works:
                folder.chmod(0o555)
            try:
                with fault:
                    return run_to_end(finetune_iter(fx.tiny, triples, quick, path=target, overwrite=True))
            finally:
                folder.chmod(0o755)

        api_case(f"finetune_iter: {what}", run, expect=(ValueError, OSError), watch=[fx.tiny, folder],
                 check=lambda _r, t=target, f=folder: [p for p in [model_loads(t)] if p]
                 + [f"left: {p.name}" for p in leftovers(f)])

    ts = fx.training_set("api-enospc")
    before_pair = ts.load(ts.names()[0])

    def update_on_full_disk():
        with simulated("enospc", ts.folder):
            ts.update(ts.names()[0], labels=np.zeros_like(before_pair[1]), reviewed=np.zeros(before_pair[1].shape))

    def same_pair(_r):
        _, lab, rev = TrainingSet(ts.folder, create=False).load(ts.names()[0])
        return [] if array_unchanged(lab, before_pair[1]) and array_unchanged(rev, before_pair[2]) else \
            ["the previous masks / reviewed pair is gone"]

    api_case("TrainingSet.update (autosave): disk full (simulated ENOSPC)", update_on_full_disk,
             watch=[ts.folder], check=same_pair)
    ts = fx.training_set("api-erofs")

    def update_read_only():
        with simulated("erofs", ts.folder):
            ts.update(ts.names()[0], labels=np.zeros_like(before_pair[1]))

    api_case("TrainingSet.update (autosave): read-only folder (simulated EROFS)", update_read_only,
             watch=[ts.folder], check=same_pair)

    fault_cases(fx, model)


# -- faults: cancel, kill -9, NaN loss -------------------------------------------------------

def drain_with_stop_at(gen, stop: threading.Event, k: int):
    """Drain ``gen``, setting ``stop`` right after event ``k``: (events after the stop, return value, cancelled)."""
    from napari_unet.inference.predictor import PredictionCancelled

    seen, after = 0, 0
    try:
        while True:
            next(gen)
            if stop.is_set():
                after += 1
            if seen == k:
                stop.set()
            seen += 1
    except StopIteration as done:
        return after, done.value, False
    except PredictionCancelled:
        return after, None, True


def fault_cases(fx: Fixtures, model):
    import torch

    from napari_unet.finetune import FinetuneSettings, finetune_iter
    from napari_unet.inference.predictor import Predictor, run_to_end
    from napari_unet.inference.segment import segment_iter
    from napari_unet.modelfile import load_model

    print("faults", flush=True)
    rng = np.random.default_rng(SEED + 3)

    # cancel segment_iter at random events
    predictor = Predictor(model, device="cpu", tile_size=128)
    stack = np.stack([fx.nuclei[0][0], fx.nuclei[1][0], fx.nuclei[0][0][::-1]])
    original = stack.copy()
    reference = run_to_end(segment_iter(model, stack, predictor=predictor)).labels
    n_events = sum(1 for _ in segment_iter(model, stack, predictor=predictor))
    points = sorted(int(k) for k in rng.integers(0, n_events - 1, 10))
    model_before = digest(fx.tiny)

    def cancel_segment():
        outcomes = [drain_with_stop_at(segment_iter(model, stack, stop=(s := threading.Event()), predictor=predictor),
                                       s, k) for k in points]
        cancelled = sum(c for _, _, c in outcomes)
        late = sum(a for a, _, _ in outcomes)
        if cancelled < len(points) or late:
            raise AssertionError(f"{len(points) - cancelled} of {len(points)} stops did not cancel; {late} events "
                                 "after a stop")
        return f"PredictionCancelled at each of {len(points)} stops (events {points[0]}..{points[-1]} of {n_events})"

    def after_cancel(_r):
        problems = [] if array_unchanged(stack, original) else ["the image array changed"]
        again = run_to_end(segment_iter(model, stack, predictor=predictor)).labels
        problems += [] if np.array_equal(again, reference) else ["the next run gives other labels"]
        return problems + changed(model_before, digest(fx.tiny))

    api_case("cancel segment_iter at 10 random events", cancel_segment, expect=None, surface="api",
             check=after_cancel)

    # cancel finetune_iter at random events and at random moments (a timer thread)
    ts = fx.training_set("fault-cancel")
    triples = ts.triples()
    settings = FinetuneSettings(minutes=None, epochs=3, steps_per_epoch=2, patch_size=64, batch_size=2, device="cpu",
                                augment=False, only_if_better=False)
    out = fx.tmp / "fault-cancel-models"
    events = []
    full = run_to_end(finetune_iter(fx.tiny, triples, settings, name="full", out_dir=out), events.append)
    steps = [e for e in events if not e.phase]  # not after training: a stop there keeps the trained model
    points = sorted(set(int(k) for k in rng.integers(0, len(steps) - 1, 5)))
    watched = digest(ts.folder, fx.tiny)
    saved = []

    def cancel_finetune():
        kept = 0
        for i, k in enumerate(points):
            stop = threading.Event()
            after, result, _ = drain_with_stop_at(
                finetune_iter(fx.tiny, triples, settings, name=f"cut{i}", out_dir=out, stop=stop), stop, k)
            if after or result is None or result.stopped != "stopped by user":
                raise AssertionError(f"stop after event {k}: {after} more events, {getattr(result, 'stopped', None)}")
            if result.path is not None:
                saved.append(result.path)
                kept += 1
        for i, delay in enumerate(rng.uniform(0.05, 1.0, 2)):
            stop = threading.Event()
            timer = threading.Timer(delay, stop.set)
            timer.start()
            result = run_to_end(finetune_iter(fx.tiny, triples, FinetuneSettings(
                **{**settings.__dict__, "epochs": 1000}), name=f"timer{i}", out_dir=out, stop=stop))
            timer.join()
            if result.stopped != "stopped by user":
                raise AssertionError(f"timer stop: {result.stopped}")
            if result.path is not None:
                saved.append(result.path)
                kept += 1
        return (f"'stopped by user' at events {points} and 2 random moments; {kept} kept the best model so far, "
                "the others saved nothing")

    def after_finetune_cancel(_r):
        problems = changed(watched, digest(ts.folder, fx.tiny))
        problems += [p for p in map(model_loads, saved) if p]
        problems += [f"left: {p.name}" for p in leftovers(out)]
        return problems

    api_case(f"cancel finetune_iter at {len(points)} random events + 2 random moments", cancel_finetune,
             expect=None, surface="api", check=after_finetune_cancel)

    # a loss that turns NaN at step 4 (after the validation at step 2 was checkpointed)
    from napari_unet.training import losses

    real_from_spec = losses.SegmentationLoss.from_spec.__func__
    calls = []

    def poisoned(cls, spec):
        loss = real_from_spec(cls, spec)

        def call(logits, target, weights=None):
            value, parts = loss(logits, target, weights)
            calls.append(1)
            return (value * float("nan") if len(calls) >= 4 else value), parts

        return call

    nan_out = fx.tmp / "fault-nan"

    def nan_loss():
        losses.SegmentationLoss.from_spec = classmethod(poisoned)
        try:
            result = run_to_end(finetune_iter(fx.tiny, triples, FinetuneSettings(**{**settings.__dict__, "epochs": 4}),
                                              name="nan", out_dir=nan_out))
        finally:
            losses.SegmentationLoss.from_spec = classmethod(real_from_spec)
        nan_loss.result = result
        return f"stopped: {result.stopped}"

    def after_nan(_r):
        result = getattr(nan_loss, "result", None)
        if result is None:
            return []
        problems = [] if result.stopped.startswith("non-finite") else [f"not stopped for the NaN: {result.stopped}"]
        if result.path is None:
            problems.append("the best checkpoint before the NaN was not kept")
        else:
            problems += [p for p in [model_loads(result.path)] if p]
        return problems + [f"left: {p.name}" for p in leftovers(nan_out)] + changed(watched, digest(ts.folder, fx.tiny))

    api_case("loss turns NaN at step 4 of finetune_iter", nan_loss, expect=None, surface="api",
             check=after_nan)

    kill_model_write(fx)
    kill_training_set_write(fx)
    del torch, load_model, full


#: A writer killed with SIGKILL: ``python -c WRITER KIND TARGET MODE``; writes version 1 completely,
#: says "written", then writes 2, 3, ... until killed (MODE "loop"), or writes half of version 2 into
#: its temporary file, says "stalled" and waits (MODE "stall": a kill in the middle of a write).
WRITER = textwrap.dedent("""
    import itertools, os, signal, sys
    sys.dont_write_bytecode = True
    kind, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    import numpy as np

    def stall(path):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        print("stalled", flush=True)
        while True:
            signal.pause()

    if kind == "model":
        import torch
        import napari_unet.modelfile as modelfile
        from napari_unet.models import build_model
        net = build_model("unet", features=(16, 32, 64, 128))  # 7.5 MB of weights
        real_save = modelfile.save_file

        def write(version, halfway=False):
            with torch.no_grad():
                for value in net.state_dict().values():
                    if value.is_floating_point():
                        value.fill_(version)
            if halfway:
                modelfile.save_file = lambda t, tmp, metadata=None: (real_save(t, tmp, metadata=metadata), stall(tmp))
            modelfile.save_model(target, net, modelfile.make_config(net, "unet", provenance={"version": version}))
    else:
        import tifffile
        from napari_unet.trainingset import TrainingSet
        ts = TrainingSet(target, create=False)
        noise = np.random.default_rng(0).integers(1, 60000, (768, 768), dtype=np.uint16)  # slow to compress
        real_imwrite = tifffile.imwrite

        def write(version, halfway=False):
            if halfway:  # the first file of the update (the masks) stops half-written
                tifffile.imwrite = lambda path, data, **kw: (real_imwrite(path, data, **kw), stall(path))
            labels = noise.copy()
            labels[0, 0] = version
            reviewed = np.ones(labels.shape, bool)
            reviewed[0, :16] = [(version >> bit) & 1 for bit in range(16)]
            ts.update("entry", labels=labels, reviewed=reviewed)

    write(1)
    print("written", flush=True)
    if mode == "stall":
        write(2, halfway=True)
    for version in itertools.count(2):
        write(version)
""")


def kill_writer(fx, kind: str, target: Path, delay: float | None) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target), "stall" if delay is None else "loop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(fx), cwd=fx.tmp)
    try:
        line = proc.stdout.readline()
        if not line.startswith("written"):
            raise RuntimeError(f"the writer said {line!r}: {proc.stderr.read()[-500:]}")
        if delay is None:
            line = proc.stdout.readline()
            if not line.startswith("stalled"):
                raise RuntimeError(f"the writer said {line!r}: {proc.stderr.read()[-500:]}")
        else:
            time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL
        proc.communicate(timeout=60)


def kill_plan(seed: int) -> list[float | None]:
    """4 random kill times, and 2 kills in the middle of a write."""
    delays = [float(d) for d in np.random.default_rng(seed).uniform(0.02, 0.4, 4)]
    return delays[:2] + [None] + delays[2:] + [None]


def kill_model_write(fx: Fixtures):
    import torch

    from napari_unet.catalog import user_models
    from napari_unet.modelfile import load_model

    folder = fx.tmp / "user-models"
    target = folder / "killed.safetensors"
    plan = kill_plan(SEED + 4)

    def run():
        mid, versions = 0, []
        for delay in plan:
            tmp_before = set(leftovers(folder))
            kill_writer(fx, "model", target, delay)
            model = load_model(target)  # raises if the file is not whole
            version = model.config["provenance"]["version"]
            if not all(torch.all(v == version) for v in model.net.state_dict().values() if v.is_floating_point()):
                raise AssertionError(f"weights of another version than the config's {version}")
            versions.append(version)
            mid += bool(set(leftovers(folder)) - tmp_before)
        run.mid = mid
        return (f"the model file loaded after each kill (versions {versions}); {mid} of {len(plan)} kills landed "
                "mid-write, leaving a hidden .tmp file (removed by a later write once an hour old)")

    def check(_r):
        problems = [] if set(user_models()) <= {"killed"} else [f"listed as models: {sorted(user_models())}"]
        if getattr(run, "mid", 0) < 2:
            problems.append("fewer than 2 kills landed in the middle of a write")
        return problems

    os.environ["NAPARI_UNET_MODEL_DIR"] = str(folder)
    api_case(f"kill -9 of a process writing a model file ({len(plan)} kills)", run, expect=None,
             surface="api", check=check)


def kill_training_set_write(fx: Fixtures):
    from napari_unet.trainingset import TrainingSet

    ts = TrainingSet(fx.tmp / "sets" / "killed")
    image = np.random.default_rng(1).random((768, 768)).astype(np.float32)
    ts.add(image, np.ones((768, 768), np.uint16), name="entry")
    noise = np.random.default_rng(0).integers(1, 60000, (768, 768), dtype=np.uint16)
    plan = kill_plan(SEED + 5)

    def run():
        mid, versions = 0, []
        for delay in plan:
            tmp_before = set(leftovers(ts.folder))
            kill_writer(fx, "training-set", ts.folder, delay)
            reopened = TrainingSet(ts.folder, create=False)
            if reopened.names() != ["entry"]:
                raise AssertionError(f"entries {reopened.names()}")
            img, labels, reviewed = reopened.load("entry")
            if not array_unchanged(img, image):
                raise AssertionError("the image changed")
            if not np.array_equal(labels.ravel()[1:], noise.ravel()[1:]):
                raise AssertionError("the masks are not a whole version")
            mask_version = int(labels[0, 0])
            reviewed_version = sum(int(b) << bit for bit, b in enumerate(reviewed[0, :16]))
            if reviewed_version != mask_version or not reviewed[1:].all():
                raise AssertionError(f"masks of version {mask_version} with the reviewed region of {reviewed_version}")
            versions.append(mask_version)
            mid += bool(set(leftovers(ts.folder)) - tmp_before)
        run.mid = mid
        return (f"the entry loaded after each kill with a matching masks/reviewed pair (versions {versions}); "
                f"{mid} of {len(plan)} kills landed mid-write")

    def check(_r):
        return [] if getattr(run, "mid", 0) >= 2 else ["fewer than 2 kills landed in the middle of a write"]

    api_case(f"kill -9 of a process autosaving a training set ({len(plan)} kills)", run, expect=None,
             surface="api", check=check)


# -- widgets (optional: a napari subprocess under a display) ---------------------------------

WIDGETS = textwrap.dedent("""
    import json, os, sys, threading, time
    sys.dont_write_bytecode = True
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari.utils.notifications import notification_manager

    rows = []
    viewer = napari.Viewer(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    app = QApplication.instance()

    def wait(cond, timeout=120):
        end = time.time() + timeout
        while not cond() and time.time() < end:
            app.processEvents()
            time.sleep(0.01)
        return cond()

    wait(lambda: widget._torch_ready)
    widget.refresh_models()

    def snapshot():
        return [(l.name, np.array(l.data, copy=True)) for l in viewer.layers]

    def same(a, b):
        return [n for n, _ in a] == [n for n, _ in b] and all(
            x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f") for (_, x), (_, y) in zip(a, b))

    def case(name, data, model, expect, cancel_after=None, rgb=None):
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        layer = viewer.add_image(data, name="img", rgb=rgb)
        widget.image.value = layer
        widget.model.value = model
        start = len(notification_manager.records)
        before = snapshot()
        t = time.time()
        widget.run_button.native.click()
        cancelled_in = None
        if cancel_after is not None:
            wait(lambda: not widget.running, cancel_after)
            if widget.running:
                c = time.time()
                widget.run_button.native.click()  # Cancel
                wait(lambda: not widget.running, 30)
                cancelled_in = time.time() - c
        ok = wait(lambda: not widget.running, 120)
        notes = [(str(n.severity).lower(), str(n.message)) for n in notification_manager.records[start:]]
        errors = [m for s, m in notes if "error" in s]
        warnings = [m for s, m in notes if "warning" in s and "is unsure of" not in m]
        after = snapshot()
        if expect == "refused" or cancelled_in is not None:
            lost = [] if same(before, after) else ["the layers changed"]
        else:
            lost = [] if same(before, after[:len(before)]) else ["the image layer changed"]
        message = errors[0] if errors else warnings[0] if warnings else (widget.status.value or "")
        rows.append({"case": name, "message": message, "finished": ok, "errors": len(errors),
                     "warnings": len(warnings),
                     "layers": [n for n, _ in after], "lost": lost, "expect": expect,
                     "cancelled_in": cancelled_in, "seconds": time.time() - t})

    rng = np.random.default_rng(int(sys.argv[1]))
    case("Segment: 5D layer", np.zeros((1, 2, 3, 16, 16), np.float32), "tiny", "refused")
    case("Segment: RGB layer marked not RGB", np.zeros((64, 64, 3), np.uint8), "tiny", "refused", rgb=False)
    case("Segment: truncated model file", rng.random((48, 48)).astype(np.float32), "broken", "refused")
    case("Segment: all-NaN layer", np.full((48, 40), np.nan, np.float32), "tiny", "accepted")
    case("Segment: 1x1 layer", np.ones((1, 1), np.float32), "tiny", "accepted")
    delay = float(rng.uniform(0.2, 1.0))
    case(f"Segment: Cancel {delay:.2f} s into a 2048² run", np.tile(rng.random((256, 256)), (8, 8)).astype(np.float32),
         "tiny", "cancel", cancel_after=delay)
    print("ROWS " + json.dumps(rows), flush=True)
    # closing napari in the middle of a run: the job stops, cleans up, the process exits with code 0
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    widget.image.value = viewer.add_image(np.tile(rng.random((256, 256)), (8, 8)).astype(np.float32), name="img")
    widget.model.value = "tiny"
    delay = float(rng.uniform(0.2, 1.0))
    widget.run_button.native.click()
    wait(lambda: False, delay)
    print(f"CLOSE {delay:.2f} {int(widget.running)}", flush=True)
    viewer.close()
    wait(lambda: False, 2)
    print("CLOSED", flush=True)
""")


def widget_cases(fx: Fixtures):
    print("widgets (napari under a display)", flush=True)
    models = fx.tmp / "widget-models"  # the widget lists the models of this folder
    models.mkdir()
    shutil.copy(fx.tiny, models / "tiny.safetensors")
    (models / "broken.safetensors").write_bytes(fx.tiny.read_bytes()[: fx.tiny.stat().st_size // 3])
    command = [sys.executable, "-c", WIDGETS, str(SEED + 6)]
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        command = ["xvfb-run", "-a"] + command
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**cli_env(fx), "NAPARI_UNET_MODEL_DIR": str(models)}, cwd=fx.tmp)
    seconds = time.perf_counter() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
    if not lines:
        add_row("widget", "Segment widget cases", first_line(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                                                             else "no output"),
                f"exit {proc.returncode}", [], "the napari process failed", seconds)
        return
    crashed = "Traceback" in proc.stderr or proc.returncode != 0
    for r in json.loads(lines[0][5:]):
        problems = list(r["lost"])
        crash = None
        if not r["finished"]:
            crash = "did not finish"
        elif r["expect"] == "refused" and not r["errors"]:
            crash = "no error notification"
        elif r["expect"] == "accepted" and (r["errors"] or "img [" not in " ".join(r["layers"])):
            crash = "no result layer"
        elif r["expect"] == "cancel" and r["cancelled_in"] is not None and r["cancelled_in"] > 2:
            crash = f"Cancel took {r['cancelled_in']:.1f} s"
        outcome = ("error notification" if r["errors"] else "warning notification" if r["warnings"] else
                   "no error") if r["expect"] != "cancel" else (
            f"cancelled in {r['cancelled_in']:.2f} s" if r["cancelled_in"] is not None else "finished before Cancel")
        add_row("widget", r["case"], r["message"], outcome, problems, crash, r["seconds"])
    close = [line.split() for line in proc.stdout.splitlines() if line.startswith("CLOSE ")]
    tail = [line for line in proc.stderr.splitlines() if line.strip() and ("Error" in line or "Traceback" in line)]
    if close:
        delay, running = float(close[0][1]), close[0][2] == "1"
        closed = "CLOSED" in proc.stdout
        add_row("widget", f"Segment: close napari {delay:.2f} s into a 2048² run"
                + ("" if running else " (the run had ended)"),
                tail[0] if tail else ("closed, the job stopped" if closed else "no output after the close"),
                f"exit {proc.returncode}", [], "traceback, Qt error or non-zero exit" if crashed or tail or not closed
                else None, 0.0)
    elif crashed:
        add_row("widget", "napari process exit", tail[0] if tail else "", f"exit {proc.returncode}", [],
                "traceback or non-zero exit", 0.0)


# -- main ------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    print()
    print("| surface | case | message the user sees (first line) | exit code / exception | lost |")
    print("|---|---|---|---|---|")
    for r in rows:
        message = r.message.replace("|", "\\|")
        print(f"| {r.surface} | {r.case} | {message} | {r.outcome} | {r.lost} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-widgets", action="store_true",
                        help="skip the Segment-widget cases (a napari subprocess, under xvfb-run -a without a display)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_faults-"))
    TMP[0] = str(tmp)
    os.environ["NAPARI_UNET_MODEL_DIR"] = str(tmp / "user-models")  # never the user's model folder
    try:
        fx = Fixtures(tmp)
        chmod_works = chmod_stops_writes(tmp)
        print(f"temporary folder {tmp}; chmod {'stops' if chmod_works else 'does not stop'} writes here "
              f"({'read-only folders are real' if chmod_works else 'read-only and full folders are simulated'})",
              flush=True)
        cli_cases(fx, chmod_works)
        api_cases(fx, chmod_works)
        if args.no_widgets:
            pass
        elif os.environ.get("DISPLAY") or shutil.which("xvfb-run"):
            widget_cases(fx)
        else:
            print("widgets: skipped (no display and no xvfb-run)", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            for p in [tmp, *tmp.rglob("*")]:
                with contextlib.suppress(OSError):
                    if p.is_dir():
                        p.chmod(0o755)
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(ROWS)
    bad = [r for r in ROWS if r.bad]
    by_surface = {s: sum(r.surface == s for r in ROWS) for s in ("cli", "api", "widget")}
    print(f"\n{len(ROWS)} cases ({', '.join(f'{n} {s}' for s, n in by_surface.items() if n)}), {len(bad)} bad; "
          f"{time.perf_counter() - started:.0f} s on {torch.get_num_threads()} thread(s)")
    for r in bad:
        print(f"BAD: {r.surface} {r.case}: {r.verdict}: {r.message} / {r.lost}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
