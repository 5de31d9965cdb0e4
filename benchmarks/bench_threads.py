"""Training steps per minute with the measured thread count (:class:`~napari_unet.training.threads.ThreadTuner`)
against a fixed one, on an idle CPU and with one core kept busy by another program.

Fine-tunes the bundled ``unet`` on the benchmark's 3 Usiigaci frames (as
``bench_finetune_usiigaci.py``) for ``--minutes`` per arm with all the cores' threads; the arms
alternate. ``--busy`` starts a process that keeps one core busy (a Python loop) for the run, as a
redrawing viewer or a second training would.

    python benchmarks/bench_threads.py --minutes 2 --repeats 2 [--busy]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_finetune_usiigaci import frames  # noqa: E402

from napari_unet.finetune import FinetuneSettings, finetune_iter  # noqa: E402
from napari_unet.inference.predictor import run_to_end  # noqa: E402
from napari_unet.training import threads, trainer  # noqa: E402


def run(arm: str, triples, minutes: float) -> tuple[int, float, list]:
    made = []

    class Tuner(threads.ThreadTuner):
        def __init__(self, enabled=True):
            super().__init__(enabled and arm == "measured")
            made.append(self)

    trainer.ThreadTuner = Tuner
    try:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            result = run_to_end(finetune_iter("unet", triples, FinetuneSettings(minutes=minutes, device="cpu",
                                                                              only_if_better=False),
                                              out_dir=out, name="threads"))
            return result.steps, time.perf_counter() - t, made[-1].switches
    finally:
        trainer.ThreadTuner = threads.ThreadTuner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    args = parser.parse_args(argv)
    corrected, _ = frames()
    triples = [(im, lab, None) for im, lab in corrected.values()]
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    print(f"{torch.get_num_threads()} threads, {'one core busy' if load else 'idle'}, {args.minutes:g} min per arm",
          flush=True)
    steps = {"fixed": [], "measured": []}
    try:
        for _ in range(args.repeats):
            for arm in steps:
                n, seconds, switches = run(arm, triples, args.minutes)
                steps[arm].append(n)
                print(f"{arm}: {n} steps in {seconds:.0f} s, thread switches {switches}", flush=True)
    finally:
        if load is not None:
            load.kill()
    fixed, measured = (sum(v) / len(v) for v in steps.values())
    print(f"mean steps: fixed {fixed:.0f}, measured {measured:.0f} ({measured / fixed:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
