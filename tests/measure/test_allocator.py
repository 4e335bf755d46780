"""Pinned malloc thresholds: a latency must not depend on what ran before it in the process."""

import importlib
import json
import platform
import subprocess
import sys

import pytest

allocator = importlib.import_module("slimtorch.measure.allocator")  # ``slimtorch.measure`` is also a function

# measure the zoo CNN three times in a fresh process, each with an evaluation pass (its allocations grew glibc's
# thresholds, so before pinning the first figure was ~1.4x the later ones); one thread keeps a shared machine's
# load from swamping the figures
THREE_MEASURES = """
import json, torch
torch.set_num_threads(1)
import slimtorch as st
model, data = st.zoo.load("digits-cnn")
x = data.example_inputs(32)
print(json.dumps([st.measure(model, x, eval_fn=data.evaluate, repeats=60).latency_ms for _ in range(3)]))
"""


def test_pinning_happens_once_and_says_what_it_did(monkeypatch):
    first = allocator.pin_allocator()
    assert allocator.pin_allocator() == first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first in ("glibc mmap/trim thresholds 64/128 MiB", "set by the environment")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator._pin() == "set by the environment"  # the user's own thresholds are kept


@pytest.mark.slow
def test_three_measures_with_evaluation_in_one_process_agree(digits_cnn):
    """Timing noise on a shared machine is random while the allocator effect was systematic (every fresh process,
    first figure ~1.4x the later ones), so up to three fresh processes are tried: one within 25% passes (a 2-core
    CI machine measured spreads of 1.51, 1.18 and 1.12 in one run of pinned code; the unpinned effect was ~1.4x in
    every process)."""
    spreads = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", THREE_MEASURES], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        latencies = json.loads(out.stdout.strip().splitlines()[-1])
        spreads.append(max(latencies) / min(latencies))
        if spreads[-1] <= 1.25:
            break
    assert min(spreads) <= 1.25, f"max/min latency of three measures per process: {spreads}"
