"""UnstructuredPruning through st.prune: exact sparsity per layer and globally, scopes, criteria, errors."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.prune.unstructured import lowest_mask, plan_masks
from slimtorch.summary import last_summary


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def zeros(module):
    return int((module.weight == 0).sum())


def test_layer_scope_gives_every_layer_the_exact_sparsity():
    model = mlp()
    st.prune(model, st.UnstructuredPruning(sparsity=0.75, scope="layer"))
    assert zeros(model[0]) == round(0.75 * 800) and zeros(model[2]) == round(0.75 * 1200)
    assert zeros(model[4]) == 0  # the classifier head is left alone by default
    assert last_summary(model).details["layers"] == {"0": 0.75, "2": 0.75}


def test_global_scope_exact_overall_and_uneven_per_layer():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(0.01)  # layer 2 is far less important: global ranking must prune it harder
    st.prune(model, st.UnstructuredPruning(sparsity=0.6, scope="global"))
    assert zeros(model[0]) + zeros(model[2]) == round(0.6 * 2000)
    per = last_summary(model).details["layers"]
    assert per["2"] > 0.95 and per["0"] < 0.2
    assert last_summary(model).details["overall"] == pytest.approx(0.6, abs=1e-9)


def test_magnitude_prunes_the_smallest_weights():
    model = mlp()
    w = model[0].weight.detach().clone()
    st.prune(model, st.UnstructuredPruning(sparsity=0.5, scope="layer", include=("0",)))
    kept = model[0].weight != 0
    assert w.abs()[kept].min() >= w.abs()[~kept].max()


def test_per_layer_dict_overrides_scope_and_head_can_be_pruned():
    model = mlp()
    cfg = st.UnstructuredPruning(sparsity=0.5, per_layer={"0": 0.9, "4": 0.2}, prune_head=True)
    st.prune(model, cfg)
    assert zeros(model[0]) == 720 and zeros(model[4]) == 30 and zeros(model[2]) == 600


def test_include_exclude_and_select():
    model = mlp()
    st.prune(model, st.UnstructuredPruning(sparsity=0.5, exclude=("0",)))
    assert zeros(model[0]) == 0 and zeros(model[2]) == 600
    other = mlp()
    st.prune(other, st.UnstructuredPruning(sparsity=0.5), select=["0"])
    assert zeros(other[0]) == 400 and zeros(other[2]) == 0


def test_convolutions_are_pruned(digits_cnn):
    model = copy.deepcopy(digits_cnn[0])
    st.prune(model, st.UnstructuredPruning(sparsity=0.9))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in convs)
    assert sum(zeros(m) for m in convs) == round(0.9 * total)
    assert zeros(model.head) == 0


@pytest.mark.parametrize("importance", ["l1", "l2", "random", "taylor", "movement"])
def test_every_criterion_gives_exact_sparsity_and_same_seed_same_masks(importance):
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    a, b = mlp(), mlp()
    st.prune(a, st.UnstructuredPruning(sparsity=0.7, importance=importance), data=data, seed=5)
    st.prune(b, st.UnstructuredPruning(sparsity=0.7, importance=importance), data=data, seed=5)
    assert zeros(a[0]) + zeros(a[2]) == 1400
    assert torch.equal(a[0].slim_mask, b[0].slim_mask) and torch.equal(a[2].slim_mask, b[2].slim_mask)


def test_random_seed_changes_masks():
    a, b = mlp(), mlp()
    st.prune(a, st.UnstructuredPruning(sparsity=0.5, importance="random"), seed=1)
    st.prune(b, st.UnstructuredPruning(sparsity=0.5, importance="random"), seed=2)
    assert not torch.equal(a[0].slim_mask, b[0].slim_mask)


def test_pruning_again_only_adds_zeros():
    model = mlp()
    st.prune(model, st.UnstructuredPruning(sparsity=0.5, importance="random"), seed=1)
    first = model[0].slim_mask.bool().clone()
    st.prune(model, st.UnstructuredPruning(sparsity=0.8, importance="random"), seed=2)
    assert not (model[0].slim_mask.bool() & ~first).any()  # nothing pruned before came back
    assert zeros(model[0]) + zeros(model[2]) == 1600


def test_plan_masks_pure():
    scores = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, 5.0, 6.0, 7.0])}
    masks = plan_masks(scores, 0.5, "global")
    assert masks["a"].tolist() == [[False, False], [False, True]] and masks["b"].tolist() == [False, True, True, True]
    assert lowest_mask(torch.zeros(5), 2).tolist() == [False, False, True, True, True]  # ties by position


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"importance": "l3"}, "importance"),
        ({"scope": "model"}, "scope"),
        ({"per_layer": {"fc": 2.0}}, "per_layer"),
        ({"calibration_batches": 0}, "calibration_batches"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(st.ConfigError, match=match):
        st.UnstructuredPruning(**kwargs)


def test_bad_layer_names_and_missing_data():
    with pytest.raises(st.ConfigError, match="per_layer"):
        st.prune(mlp(), st.UnstructuredPruning(per_layer={"fc9": 0.5}))
    with pytest.raises(st.ConfigError, match="matched no layer"):
        st.prune(mlp(), st.UnstructuredPruning(include=("fc9",)))
    with pytest.raises(st.DataError, match="data="):
        st.prune(mlp(), st.UnstructuredPruning(importance="taylor"))


def test_recipe_round_trip():
    cfg = st.UnstructuredPruning(sparsity=0.8, include=("0",), per_layer={"0": 0.5})
    again = st.UnstructuredPruning.from_dict({k: v for k, v in cfg.to_dict().items() if k != "method"})
    assert again == cfg
    assert st.UnstructuredPruning.from_dict({"include": ["0", "2"]}).include == ("0", "2")
