"""The timing loops: per-call samples, alternating contenders, and the kernel race built on them."""

import time

import pytest

from slimtorch.measure.latency import Timing, time_alternating, time_fn
from slimtorch.quant import kernels


def _sleeper(ms: float):
    return lambda: time.sleep(ms / 1e3)


def test_time_fn_takes_per_call_samples_in_ms():
    calls = []
    timing = time_fn(lambda: calls.append(time.sleep(0.002)), warmup=2, repeats=7)
    assert len(calls) == 9 and len(timing.samples_ms) == 7
    assert 1.9 < timing.median_ms < 50 and timing.p90_ms >= timing.median_ms


def test_time_alternating_times_every_contender_in_every_block():
    order = []
    fns = {name: (lambda n=name, ms=ms: (order.append(n), time.sleep(ms / 1e3))) for name, ms in (("a", 1), ("b", 4))}
    timings = time_alternating(fns, blocks=3, repeats=2, warmup=1)
    assert {n: len(t.samples_ms) for n, t in timings.items()} == {"a": 6, "b": 6}
    # blocks alternate: a's calls (warm-up + 2) then b's, three times over
    assert "".join(order) == ("aaa" + "bbb") + ("aaa" + "bbb") * 2
    assert timings["b"].median_ms > timings["a"].median_ms


def test_p90_of_known_samples():
    assert Timing([1.0, 2.0, 3.0, 4.0, 100.0]).p90_ms == 100.0
    assert Timing([5.0]).median_ms == 5.0


@pytest.fixture()
def fresh_choices(monkeypatch):
    monkeypatch.setattr(kernels, "_CHOICE", {})


def test_the_kernel_race_picks_the_faster_candidate_once(fresh_choices):
    calls = {"slow": 0, "fast": 0}

    def candidate(name, ms):
        def run():
            calls[name] += 1
            time.sleep(ms / 1e3)
        return run

    key = ("test", 1)
    assert kernels.fastest(key, {"slow": candidate("slow", 5), "fast": candidate("fast", 0.1)}) == "fast"
    assert kernels.chosen(key) == "fast"
    before = dict(calls)
    assert kernels.fastest(key, {"slow": candidate("slow", 5), "fast": candidate("fast", 0.1)}) == "fast"
    assert calls == before  # remembered: not timed again
