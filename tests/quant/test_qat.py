"""prepare_qat -> finetune -> convert gives the same integer layers as post-training quantization."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.errors import ConfigError
from slimtorch.quant.fake import FakeQuantConv2d, FakeQuantLinear
from slimtorch.quant.formats import QuantConv2d
from slimtorch.quant.modules import QuantLinear
from slimtorch.quant.qat import QAT, register_qat


def test_untrained_convert_equals_ptq_weight_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    cfg = st.WeightOnlyQuant(bits=4, group_size=32)
    ptq = st.quantize(copy.deepcopy(model), cfg)
    qat = st.convert(st.prepare_qat(copy.deepcopy(model), cfg))
    for a, b in zip(ptq.modules(), qat.modules(), strict=True):
        if isinstance(a, QuantLinear):
            assert isinstance(b, QuantLinear) and a.manifest_args() == b.manifest_args()
            assert torch.equal(a.qweight, b.qweight) and torch.allclose(a.weight_scale, b.weight_scale)


def test_static_qat_on_cnn_folds_bn_and_converts(digits_cnn):
    model, data = digits_cnn
    m = st.prepare_qat(copy.deepcopy(model), st.StaticQuant(), data=data.calibration)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert sum(isinstance(x, FakeQuantConv2d) for x in m.modules()) == 9
    x = data.example_inputs(16)
    m(x)  # training-mode pass: activation ranges tracked
    q = st.convert(m)
    assert sum(isinstance(x, QuantConv2d) for x in q.modules()) == 9 and not q.training
    assert data.evaluate(q) >= data.evaluate(model) - 0.02


def test_convert_without_prepare_and_unknown_config():
    with pytest.raises(ConfigError, match="prepare_qat"):
        st.convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="no QAT support"):
        st.prepare_qat(nn.Linear(2, 2), st.StructuredPruning())


def test_registry_has_every_quant_family():
    assert {c.__name__ for c in QAT} >= {"StaticQuant", "DynamicQuant", "WeightOnlyQuant", "Binarize", "Ternarize"}
    assert callable(register_qat)


@pytest.mark.slow
def test_int4_qat_at_least_as_good_as_ptq(digits_mlp):
    model, data = digits_mlp
    cfg = st.WeightOnlyQuant(bits=4, group_size=32)
    ptq = data.evaluate(st.quantize(copy.deepcopy(model), cfg))
    m = st.prepare_qat(copy.deepcopy(model), cfg)
    assert sum(isinstance(x, FakeQuantLinear) for x in m.modules()) == 3
    st.finetune(m, data, teacher=model, epochs=1)
    assert data.evaluate(st.convert(m)) >= ptq - 0.003


def test_qat_with_a_group_size_not_dividing_a_layer_converts_to_what_it_trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 16))  # 40 = a group of 32 and one of 8
    st.prepare_qat(model, st.WeightOnlyQuant(bits=4, group_size=32))
    assert isinstance(model[0], FakeQuantLinear) and isinstance(model[2], FakeQuantLinear)
    assert model[2].weight_scale.shape == (16, 2)
    x = torch.randn(5, 64)
    model(x).pow(2).mean().backward()
    assert model[2].weight_scale.grad[:, 1].abs().sum() > 0  # the short group's scale learns too
    with torch.no_grad():
        fake, fake_head = model.eval()(x), model[2].fake_weight()
        q = st.convert(model)
        assert isinstance(q[2], QuantLinear) and torch.allclose(q[2].dequantized_weight(), fake_head)
        assert torch.allclose(q(x), fake, atol=2e-2 * float(fake.abs().max()))
