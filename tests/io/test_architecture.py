"""The saved module tree and the architecture check behind ``slimtorch.load``."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.io import architecture
from slimtorch.prune.layers import Skip


def _mlp():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))


def test_the_tree_stores_each_class_once_and_every_module_in_order():
    tree = architecture.module_tree(_mlp())
    assert tree["types"] == ["torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear",
                             "torch.nn.modules.activation.ReLU"]
    assert tree["modules"] == [["", 0], ["0", 1], ["1", 2], ["2", 0], ["2.0", 1], ["2.1", 2], ["3", 1]]


def test_the_same_architecture_passes_and_a_replaced_module_may_hide_anything_below_it():
    tree = architecture.module_tree(_mlp())
    architecture.check_tree(tree, _mlp(), replaced=set())
    other = _mlp()
    other[2] = nn.Sequential(nn.Tanh())  # what LayerPruning's Skip stood in for does not matter
    architecture.check_tree(tree, other, replaced={"2"})
    with pytest.raises(st.ArtifactError, match=r"`2.0` \(saved Linear, model has Tanh\)"):
        architecture.check_tree(tree, other, replaced=set())


def test_a_skip_in_the_saved_tree_stands_for_a_whole_block():
    pruned = _mlp()
    pruned[2] = Skip()
    tree = architecture.module_tree(pruned)
    architecture.check_tree(tree, _mlp(), replaced={"2"})
    with pytest.raises(st.ArtifactError, match=r"`2` \(saved .*Skip, model has .*Sequential\)"):
        architecture.check_tree(tree, _mlp(), replaced=set())


def test_a_class_from_a_script_matches_the_same_class_imported_from_a_module():
    tree = architecture.module_tree(nn.Sequential(nn.Linear(2, 2)))
    tree["types"][0] = "__main__.Sequential"
    architecture.check_tree(tree, nn.Sequential(nn.Linear(2, 2)), replaced=set())
    tree["types"][0] = "mymodels.Sequential"
    with pytest.raises(st.ArtifactError, match="the root module"):
        architecture.check_tree(tree, nn.Sequential(nn.Linear(2, 2)), replaced=set())


def test_a_lazy_module_matches_the_class_it_becomes(tmp_path):
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(2, 5)
    model(x)  # LazyLinear -> Linear(5, 8)
    loaded = st.load(st.save(model, tmp_path / "lazy"), model=nn.Sequential(nn.LazyLinear(8), nn.ReLU(),
                                                                             nn.Linear(8, 2)))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_tensor_shapes_may_only_shrink_where_the_class_was_kept():
    model = nn.Linear(8, 4)
    before = architecture.tensor_shapes(model)
    architecture.check_tensors({"weight": (4, 6), "bias": (4,)}, model, before, kept_class={""}, rebuilt=set())
    with pytest.raises(st.ArtifactError, match=r"tensor 'weight' is \[4, 9\] in the file but \[4, 8\]"):
        architecture.check_tensors({"weight": (4, 9), "bias": (4,)}, model, before, kept_class={""}, rebuilt=set())
    with pytest.raises(st.ArtifactError, match=r"'weight' is \[4, 6\] in the file but its module '', rebuilt"):
        architecture.check_tensors({"weight": (4, 6), "bias": (4,)}, model, before, kept_class={""}, rebuilt={""})
