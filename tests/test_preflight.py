"""What every verb checks before it changes a model: lazy modules materialised, NaN/Inf weights refused."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.preflight import check_finite, lazy_modules, materialize


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _with_nan(model: nn.Sequential) -> nn.Sequential:
    with torch.no_grad():
        model[2].weight[0, :3] = float("nan")
        model[2].bias[1] = float("inf")
    return model


def test_check_finite_names_the_first_tensor_and_counts_its_values():
    model = _with_nan(_mlp())
    with pytest.raises(st.DataError, match=r"layer '2.weight' holds 3 NaN and 0 Inf values; fix or remove them"):
        check_finite(model)
    with torch.no_grad():
        model[2].weight.zero_()
    with pytest.raises(st.DataError, match=r"layer '2.bias' holds 0 NaN and 1 Inf"):
        check_finite(model)


def test_an_infinite_mask_buffer_is_allowed_but_a_nan_buffer_is_not():
    model = _mlp()
    model.register_buffer("causal_mask", torch.full((4, 4), float("-inf")).triu(1))
    check_finite(model)
    model.register_buffer("stat", torch.tensor([1.0, float("nan")]))
    with pytest.raises(st.DataError, match="layer 'stat' holds 1 NaN"):
        check_finite(model)


@pytest.mark.parametrize("verb, config", [
    (st.quantize, st.DynamicQuant()),
    (st.quantize, st.WeightOnlyQuant(bits=4, group_size=16)),
    (st.prune, st.UnstructuredPruning(sparsity=0.5)),
    (st.decompose, st.LowRank(rank=4)),
])
def test_verbs_refuse_nan_weights_and_leave_the_model_untouched(verb, config):
    model = _with_nan(_mlp())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(st.DataError, match="layer '2.weight' holds 3 NaN"):
        verb(model, config, example_inputs=torch.randn(2, 16))
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)


def test_compress_refuses_nan_weights_before_a_finetune_stage():
    model = _with_nan(_mlp())
    data = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(2)]
    with pytest.raises(st.DataError, match="layer '2.weight' holds 3 NaN"):
        st.compress(model, [st.Finetune(epochs=1, distill=False)], data=data, example_inputs=torch.randn(2, 16))


def test_static_quant_refuses_nan_calibration_data():
    model = _mlp()
    calib = [torch.randn(8, 16) for _ in range(3)]
    calib[1][0, 0] = float("nan")
    with pytest.raises(st.DataError, match="batch 2 of the data holds 1 NaN and 0 Inf input values"):
        st.quantize(model, st.StaticQuant(calibration_batches=3), data=calib)


def test_materialize_gives_lazy_modules_their_shapes_with_one_forward():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2)).train()
    assert [name for name, _ in lazy_modules(model)] == ["0", "2"]
    with pytest.raises(st.UnsupportedModelError, match=r"layer '0' \(LazyLinear\).*pass example_inputs="):
        materialize(model, None)
    materialize(model, torch.randn(3, 5))
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear] and model[0].weight.shape == (8, 5)
    assert model.training and not lazy_modules(model)
    materialize(model, None)  # nothing lazy left: no inputs needed


def test_every_verb_and_measure_materialise_lazy_modules():
    x = torch.randn(4, 16)
    m = st.measure(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2)), x, repeats=5)
    assert m.params == 16 * 8 + 8 + 8 * 2 + 2
    model = st.quantize(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2)), st.DynamicQuant(),
                        example_inputs=x)
    assert model(x).shape == (4, 2)
    with pytest.raises(st.UnsupportedModelError, match=r"layer '0' \(LazyLinear\)"):
        st.prune(nn.Sequential(nn.LazyLinear(8)), st.UnstructuredPruning(sparsity=0.5))
    lazy = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    st.compress(lazy, [st.UnstructuredPruning(sparsity=0.5)], example_inputs=x)
    assert float((lazy[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
