import os

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.measure.latency import time_alternating
from slimtorch.measure.metrics import retime_side_by_side
from slimtorch.measure.size import count_params


def test_single_linear_layer_known_by_hand(tmp_path):
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[:, :16] = 0  # 512 zeros
    x = torch.randn(8, 64)
    m = st.measure(layer, x, repeats=5)
    assert m.params == 64 * 32 + 32
    assert m.nonzero_params == 64 * 32 + 32 - 512
    assert m.macs == 8 * 64 * 32 and m.flops == 2 * m.macs
    assert m.batch_size == 8 and m.threads == torch.get_num_threads()
    assert m.accuracy is None
    assert 0 < m.latency_ms <= m.latency_p90_ms
    assert m.size_bytes == os.path.getsize(st.save(layer, tmp_path / "layer"))


def test_peak_memory_counts_weights_and_live_activations():
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    x = torch.randn(64, 256)
    m = st.measure(model, x, repeats=5)
    weights = sum(p.numel() * 4 for p in model.parameters())
    # the hidden activation (64x1024 floats) and the ReLU output are alive together
    assert weights + 2 * 64 * 1024 * 4 <= m.peak_memory_bytes <= weights + 4 * 64 * 1024 * 4


def test_eval_fn_becomes_accuracy_and_mode_is_restored():
    model = nn.Linear(4, 2).train()
    m = st.measure(model, torch.randn(1, 4), eval_fn=lambda mod: 0.75, repeats=5)
    assert m.accuracy == 0.75 and model.training


def test_shared_parameters_count_once():
    a = nn.Linear(4, 4)
    model = nn.Sequential(a, a)
    assert count_params(model) == (20, 20)


def test_bad_inputs_name_the_problem():
    with pytest.raises(st.UnsupportedModelError, match="failed on the example inputs"):
        st.measure(nn.Linear(4, 2), torch.randn(1, 5))
    with pytest.raises(st.ConfigError, match="runtime"):
        st.measure(nn.Linear(4, 2), torch.randn(1, 4), runtime="tvm")


def test_alternating_timing_keeps_per_call_samples_and_ranks_work():
    small, big = torch.randn(16, 16), torch.randn(1024, 1024)
    t = time_alternating({"small": lambda: small @ small, "big": lambda: big @ big}, blocks=3, repeats=6)
    assert len(t["small"].samples_ms) == len(t["big"].samples_ms) == 18
    assert t["big"].median_ms > t["small"].median_ms


def test_retime_side_by_side_replaces_only_latency_and_restores_modes():
    fast, slow = nn.Linear(8, 8), nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)], nn.Linear(512, 8))
    x8, x512 = torch.randn(4, 8), torch.randn(4, 512)
    slow.train()
    m_fast, m_slow = st.measure(fast, x8), st.measure(slow, x512)
    # one input for both: wrap so each model sees its own width
    both = {"fast": (nn.Sequential(fast), m_fast), "slow": (nn.Sequential(nn.Linear(8, 512), slow), m_slow)}
    fair = retime_side_by_side(both, x8)
    assert fair["slow"].latency_ms > fair["fast"].latency_ms
    assert fair["fast"].params == m_fast.params and fair["slow"].flops == m_slow.flops
    assert slow.training and fair["slow"].latency_p90_ms >= fair["slow"].latency_ms


def test_compare_ratios_markdown_and_json():
    before = st.Metrics(params=100, nonzero_params=100, size_bytes=4000, flops=200, macs=100, latency_ms=2.0,
                        latency_p90_ms=3.0, peak_memory_bytes=1000, accuracy=0.9, batch_size=1, threads=2)
    after = st.Metrics(params=100, nonzero_params=25, size_bytes=1000, flops=100, macs=50, latency_ms=1.0,
                       latency_p90_ms=1.5, peak_memory_bytes=500, accuracy=0.89, batch_size=1, threads=2)
    c = st.compare(before, after)
    r = c.to_dict()["ratios"]
    assert r["size_x"] == 4 and r["params_x"] == 4 and r["speedup_x"] == 2
    assert r["accuracy_change"] == pytest.approx(-0.01)
    md = c.to_markdown()
    assert "| saved size | 3.9 KiB | 1000 B | 4.00x smaller |" in md
    assert "-1.00 points" in str(c)
    assert st.Metrics.from_dict(after.to_dict()) == after
