"""Masks hold through optimizer steps and custom loops, survive copies and save/load, and fold away."""

import copy

import torch
from torch import nn

import slimtorch as st
from slimtorch.prune.masks import apply_masks, is_masked, masks, restore_masks, sparsity


def mlp(hidden=64):
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))


def pruned_mlp(sparsity=0.8, hidden=64):
    torch.manual_seed(0)
    return st.prune(mlp(hidden), st.UnstructuredPruning(sparsity=sparsity, scope="layer"))


def train_steps(model, optimizer, steps=5):
    torch.manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_masks_survive_optimizer_steps_with_momentum_and_adam():
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                 lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)):
        model = pruned_mlp()
        before = {n: m.clone() for n, m in masks(model).items()}
        train_steps(model, make(model.parameters()))
        # zero right after the step, with no forward in between: the gradient hook kept them at zero
        for name, keep in before.items():
            w = model.get_submodule(name).weight
            assert torch.all(w[~keep] == 0), name
            assert (w[keep] != 0).all()
        assert sparsity(model) == {"0": 819 / 1024, "2": round(0.8 * 4096) / 4096}


def test_forward_hook_rezeroes_weights_changed_behind_its_back():
    model = pruned_mlp()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # e.g. a loop that loaded other weights
    model.train()
    model(torch.randn(2, 16))
    assert torch.all(model[0].weight[~model[0].slim_mask.bool()] == 0)


def test_deepcopy_gets_its_own_working_hooks():
    model = pruned_mlp()
    twin = copy.deepcopy(model)
    restore_masks(twin)
    train_steps(twin, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))
    keep = twin[2].slim_mask.bool()
    assert torch.all(twin[2].weight[~keep] == 0)
    # the original is untouched by the copy's training and still has its hooks
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert torch.all(model[2].weight[~model[2].slim_mask.bool()] == 0)


def test_make_permanent_removes_all_pruning_state():
    model = pruned_mlp()
    out_before = model.eval()(torch.ones(3, 16))
    st.make_permanent(model)
    assert not any(is_masked(m) for m in model.modules())
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    assert model[0].weight._backward_hooks in (None, {}) or len(model[0].weight._backward_hooks) == 0
    assert torch.equal(model(torch.ones(3, 16)), out_before)
    assert int((model[0].weight == 0).sum()) == round(0.8 * 1024)


def test_save_load_round_trip_is_exact_and_compact(tmp_path):
    model = pruned_mlp(0.9, hidden=256)
    dense_path = st.save(mlp(256), tmp_path / "dense")
    path = st.save(model, tmp_path / "sparse")
    assert path.stat().st_size <= 0.2 * dense_path.stat().st_size
    loaded = st.load(path, mlp(256))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # training can continue with the same masks, re-derived from the zeros
    assert restore_masks(loaded, layers=["0", "2"]) == 2
    assert all(torch.equal(masks(loaded)[n], masks(model)[n]) for n in ("0", "2"))


def test_apply_masks():
    model = pruned_mlp()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    apply_masks(model)
    assert int((model[2].weight == 0).sum()) == int((~model[2].slim_mask.bool()).sum())


def test_torch_nn_utils_prune_layers_are_left_to_torch():
    from torch.nn.utils import prune as torch_prune

    from slimtorch.prune.masks import sparse_layers

    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    assert sparse_layers(model) == []  # its weight is computed from weight_orig * weight_mask
    st.finetune(model, [(torch.randn(8, 16), torch.randint(0, 4, (8,)))], epochs=1)
    assert int((model[0].weight == 0).sum()) >= 512
