"""The training thread count follows measured step times (a busy core makes fewer threads faster)."""

from __future__ import annotations

import torch

from napari_unet.training import threads


def _run(tuner, steps, seconds_for, clock):
    for _ in range(steps):
        tuner.before_step()
        clock[0] += seconds_for(torch.get_num_threads())
        tuner.after_step()


def test_the_faster_thread_count_is_kept_and_probed_again(monkeypatch):
    before = torch.get_num_threads()
    clock = [0.0]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    torch.set_num_threads(2)
    try:
        tuner = threads.ThreadTuner()
        assert tuner.enabled and tuner.threads == 2
        busy = {2: 1.8, 1: 0.55}  # one core taken by another program: two threads wait for it
        _run(tuner, 2 + 2 * threads.PROBE_STEPS, busy.get, clock)  # timed, then the first probe at once
        assert tuner.current == 1 and tuner.switches == [(2 + 2 * threads.PROBE_STEPS, 1)]
        idle = {2: 0.3, 1: 0.55}  # the other program ended: two threads win again at the next probe
        _run(tuner, threads.PROBE_EVERY + threads.PROBE_STEPS + 1, idle.get, clock)
        assert tuner.current == 2 and len(tuner.switches) == 2
        # a probe that loses doubles the wait before the next one
        _run(tuner, threads.PROBE_EVERY + threads.PROBE_STEPS + 1, idle.get, clock)
        assert tuner.current == 2 and tuner.every == 2 * threads.PROBE_EVERY
        torch.set_num_threads(1)
        tuner.restore()
        assert torch.get_num_threads() == 2  # what the run started with
    finally:
        torch.set_num_threads(before)


def test_one_thread_or_a_gpu_is_left_alone(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not threads.ThreadTuner().enabled
        torch.set_num_threads(2)
        assert not threads.ThreadTuner(enabled=False).enabled
    finally:
        torch.set_num_threads(before)
