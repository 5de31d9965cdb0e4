"""CPU threads for training, chosen by measuring, not assumed.

On a 2-core machine PyTorch's two threads train 1.85x faster than one when the CPU is idle
(0.30 vs 0.56 s per step of the bundled U-Net, batch 4 of 256²), but 3.3x slower when another
program keeps one core busy (1.79 vs 0.54 s): each operation waits for the thread that has no
core. A viewer that redraws, another napari or a second training is such a program. So
:class:`ThreadTuner` times the steps, runs a few with one thread fewer after the first ones and
then now and again, and keeps whichever count is faster; a probe that loses waits twice as long
before the next one.
"""

from __future__ import annotations

import statistics
import time

import torch

#: steps between two probes of the other thread count (doubled after each probe that loses)
PROBE_EVERY = 40
MAX_PROBE_EVERY = 640
#: steps per probe, and the steps of the current count compared with them
PROBE_STEPS = 3
#: the other count must be this much faster to be taken
MARGIN = 0.9


class ThreadTuner:
    """Switches ``torch.set_num_threads`` between the count it found and one fewer, by the
    measured time per training step. Use :meth:`before_step` / :meth:`after_step` around each
    step and :meth:`restore` at the end (the count is process-wide)."""

    def __init__(self, enabled: bool = True):
        self.full = torch.get_num_threads()
        self.enabled = enabled and self.full >= 2
        self.current, self.other = self.full, self.full - 1
        self.every = PROBE_EVERY
        self.countdown = PROBE_STEPS  # the first probe as soon as the current count has been timed
        self.probing = 0  # steps of the current probe still to run
        self.recent: list[float] = []  # seconds of the last steps at the current count
        self.probe: list[float] = []
        self.started = None
        self.steps = 0
        self.switches: list[tuple[int, int]] = []  # (step, new count), for reports and tests

    @property
    def threads(self) -> int:
        return self.other if self.probing else self.current

    def before_step(self) -> None:
        if not self.enabled:
            return
        if not self.probing and self.countdown <= 0 and len(self.recent) >= PROBE_STEPS:
            self.probing, self.probe = PROBE_STEPS, []
        n = self.threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self.started = time.perf_counter()

    def after_step(self) -> None:
        if not self.enabled or self.started is None:
            return
        seconds = time.perf_counter() - self.started
        self.started = None
        self.steps += 1
        if self.steps <= 2:  # the first steps pay one-off set-up
            return
        if self.probing:
            self.probe.append(seconds)
            self.probing -= 1
            if not self.probing:
                self._decide()
            return
        self.recent = (self.recent + [seconds])[-PROBE_STEPS:]
        self.countdown -= 1

    def _decide(self) -> None:
        if statistics.median(self.probe) < MARGIN * statistics.median(self.recent):
            self.current, self.other = self.other, self.current
            self.switches.append((self.steps, self.current))
            self.recent, self.every = list(self.probe), PROBE_EVERY
        else:
            self.every = min(MAX_PROBE_EVERY, 2 * self.every)
        self.countdown = self.every

    def restore(self) -> None:
        if self.enabled and torch.get_num_threads() != self.full:
            torch.set_num_threads(self.full)
