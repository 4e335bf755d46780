"""Property tests for the mask planning of unstructured pruning: exact zero counts for any layer sizes and
sparsities, global ranking (every pruned score <= every kept score), per-layer overrides, and determinism."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from slimtorch.prune.unstructured import plan_masks, report

sizes = hs.lists(hs.integers(1, 300), min_size=1, max_size=5)
fractions = hs.floats(0.0, 1.0, allow_nan=False)


def _scores(sizes: list[int], seed: int, ties: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, n in enumerate(sizes):
        s = torch.rand(n, generator=g)
        out[f"layer{i}"] = (s * 4).floor() if ties else s  # ties: only 4 distinct values
    return out


@settings(max_examples=60, deadline=None)
@given(sizes, fractions, hs.integers(0, 10_000), hs.booleans())
def test_global_scope_zeroes_exactly_round_s_n_and_ranks_globally(sizes, sparsity, seed, ties):
    scores = _scores(sizes, seed, ties)
    masks = plan_masks(scores, sparsity, "global")
    total = sum(sizes)
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == round(sparsity * total)
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    dropped = torch.cat([scores[n][~masks[n]] for n in scores])
    if kept.numel() and dropped.numel():
        assert float(dropped.max()) <= float(kept.min())
    assert report(masks)["overall"] == zeros / total
    again = plan_masks(scores, sparsity, "global")
    assert all(torch.equal(again[n], masks[n]) for n in masks)


@settings(max_examples=60, deadline=None)
@given(sizes, fractions, fractions, hs.integers(0, 10_000))
def test_layer_scope_and_per_layer_overrides_are_exact_per_layer(sizes, sparsity, override, seed):
    scores = _scores(sizes, seed, ties=False)
    per_layer = {"layer0": override}
    for scope in ("layer", "global"):
        masks = plan_masks(scores, sparsity, scope, per_layer)
        assert int((~masks["layer0"]).sum()) == round(override * sizes[0])
        rest = [n for n in scores if n != "layer0"]
        if scope == "layer":
            for n in rest:
                assert int((~masks[n]).sum()) == round(sparsity * scores[n].numel())
        elif rest:
            pooled = sum(scores[n].numel() for n in rest)
            assert sum(int((~masks[n]).sum()) for n in rest) == round(sparsity * pooled)
