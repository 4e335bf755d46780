"""Quantization families keep each layer's behaviour: TF-"same" padded convolutions (a port's own subclass and
timm's Conv2dSame), unknown subclasses (left float, named) and GPT-2's transposed Conv1D (quantized)."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.layer_kinds import pad_same
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear
from slimtorch.quant.formats import QuantConv2d
from slimtorch.quant.modules import QuantLinear
from slimtorch.summary import last_summary


class TFSameConv(nn.Conv2d):
    """A TensorFlow port's convolution: padding 0, "same" padding applied in its forward."""

    def forward(self, x):
        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))


def _same_conv(kind: str, cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    if kind == "timm":
        from timm.layers import Conv2dSame

        return Conv2dSame(cin, cout, k, stride=stride)
    return TFSameConv(cin, cout, k, stride=stride)


class TFPortNet(nn.Module):
    """Stem conv (stride 2, same padding), a residual block of same-padded 3x3 convs, a head. On a 27x27 input
    the stride-2 padding is asymmetric (the extra row/column goes after), so a dropped padding changes shapes
    and the residual add fails."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.stem = _same_conv(kind, 3, 16, 3, stride=2)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.conv1 = _same_conv(kind, 16, 16, 3)
        self.act1 = nn.ReLU()
        self.conv2 = _same_conv(kind, 16, 16, 3)
        self.down = _same_conv(kind, 16, 16, 2, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = x + self.conv2(self.act1(self.conv1(x)))
        return self.head(self.down(x).mean((2, 3)))


def _model(kind: str) -> TFPortNet:
    torch.manual_seed(0)
    model = TFPortNet(kind)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 27, 27, generator=gen) for _ in range(4)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _round_trip(model: nn.Module, make: nn.Module, tmp_path, x: torch.Tensor) -> None:
    path = st.save(model, tmp_path / "m")
    loaded = st.load(path, make)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


KINDS = ["own", "timm"]


@pytest.mark.parametrize("kind", KINDS)
def test_static_int8_keeps_same_padding_and_round_trips(kind, tmp_path):
    model, data = _model(kind), _batches()
    x = data[0]
    with torch.no_grad():
        ref = model(x)
    q = st.quantize(copy.deepcopy(model), st.StaticQuant(calibration_batches=4), data=data)
    convs = {n: m for n, m in q.named_modules() if isinstance(m, QuantConv2d)}
    assert set(convs) == {"stem", "conv1", "conv2", "down"} and all(m.same_pad for m in convs.values())
    assert convs["conv1"].relu  # ReLU fusion still finds the ReLU after a padding subclass
    with torch.no_grad():
        out = q(x)
    assert out.shape == ref.shape and _rel(out, ref) < 0.05
    assert set(last_summary(q).changed) == {"stem", "conv1", "conv2", "down", "head"}
    _round_trip(q, _model(kind), tmp_path, x)
    path = st.export_onnx(q, x[:1], tmp_path / "q.onnx", check=True, check_inputs=data)  # raises on disagreement
    assert st.check_agreement(q, path, data).passed


@pytest.mark.parametrize("kind", KINDS)
def test_static_qat_carries_same_padding_to_the_integer_layers(kind, tmp_path):
    model, data = _model(kind), _batches()
    with torch.no_grad():
        ref = model(data[0])
    prepared = st.prepare_qat(copy.deepcopy(model), st.StaticQuant(), data=data)
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-4)
    for x in data:
        loss = (prepared(x) - model(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = st.convert(prepared)
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 4 and all(m.same_pad for m in convs)
    with torch.no_grad():
        out = q(data[0])
    assert out.shape == ref.shape and _rel(out, ref) < 0.1
    _round_trip(q, _model(kind), tmp_path, data[0])


def _dequantized_float(model: nn.Module, packed: nn.Module) -> nn.Module:
    """The float model with every binary layer's weight replaced by the weight it computes with."""
    ref = copy.deepcopy(model)
    for name, m in packed.named_modules():
        if isinstance(m, BinaryConv2d | BinaryLinear):
            layer = ref.get_submodule(name)
            with torch.no_grad():
                layer.weight.copy_(m.dequantized_weight().reshape(layer.weight.shape))
    return ref


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", [st.Binarize(keep_first=False), st.Ternarize(keep_first=False)],
                         ids=["binary", "ternary"])
def test_binary_and_ternary_keep_same_padding(kind, config, tmp_path):
    model, x = _model(kind), _batches()[0]
    q = st.quantize(copy.deepcopy(model), config)
    convs = [m for m in q.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 4 and all(m.same_pad for m in convs)
    reference = _dequantized_float(model, q)
    with torch.no_grad():
        for rows in (1, 64):  # the packed (few rows) and the unpacked kernel
            for m in convs:
                m.max_packed_rows = rows
            torch.testing.assert_close(q(x), reference(x), atol=1e-4, rtol=1e-4)
    _round_trip(q, _model(kind), tmp_path, x)
    path = st.export_onnx(q, x[:1], tmp_path / "b.onnx", check=True)  # the float twin pads too
    assert st.check_agreement(q, path, x).passed


class ScaledLinear(nn.Linear):
    """A subclass with a forward of its own that no swap can reproduce."""

    def forward(self, x):
        return 0.5 * super().forward(x)


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x).tanh()


def _unknown_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ScaledConv(8, 8, 3, padding=1), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 128), ScaledLinear(128, 128), nn.Linear(128, 4)).eval()


@pytest.mark.parametrize("config", [st.DynamicQuant(), st.StaticQuant(), st.WeightOnlyQuant(),
                                    st.Binarize(keep_first=False, keep_last=False)],
                         ids=["dynamic", "static", "weight_only", "binary"])
def test_unknown_subclasses_stay_float_and_are_named(config, caplog):
    model = _unknown_model()
    data = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    with caplog.at_level("INFO", logger="slimtorch"):
        q = st.quantize(model, config, data=data)
    assert type(q[4]) is ScaledLinear and type(q[1]) is ScaledConv
    assert "skipped 4 (" in caplog.text and "ScaledLinear" in caplog.text
    summary = last_summary(q)
    assert "ScaledLinear" in summary.skipped["4"] and "3" in summary.changed
    if isinstance(config, st.StaticQuant | st.Binarize):
        assert "ScaledConv" in summary.skipped["1"] and "0" in summary.changed
    with torch.no_grad():
        assert q(data[0]).shape == (2, 4)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # use_cache=False: torch.export cannot return transformers' DynamicCache (unrelated to quantization)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                     use_cache=False)
    return transformers.GPT2LMHeadModel(config).eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("config,tol", [(st.DynamicQuant(), 0.05), (st.StaticQuant(calibration_batches=2), 0.1),
                                        (st.WeightOnlyQuant(bits=4, group_size=32), 0.15)],
                         ids=["dynamic", "static", "weight_only"])
def test_gpt2_conv1d_layers_are_quantized(config, tol, tmp_path):
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = _logits(model, ids)
    data = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(2)]
    q = st.quantize(copy.deepcopy(model), config, data=data)
    quantized = {n for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert len([n for n in quantized if n.startswith("transformer.h.")]) == 8
    assert "lm_head" in quantized and set(last_summary(q).changed) == quantized
    assert not last_summary(q).skipped
    out = _logits(q, ids)
    assert out.shape == ref.shape and _rel(out, ref) < tol
    path = st.save(q, tmp_path / "gpt2")
    assert torch.equal(_logits(st.load(path, _gpt2()), ids), out)
    if isinstance(config, st.DynamicQuant):
        onnx_path = st.export_onnx(q, {"input_ids": ids}, tmp_path / "gpt2.onnx", check=True)
        assert st.check_agreement(q, onnx_path, {"input_ids": ids}).passed


@pytest.mark.parametrize("config", [st.DynamicQuant(), st.StaticQuant()], ids=["dynamic", "static"])
def test_gpt2_qat_trains_and_converts_the_conv1d_layers(config):
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(2)]
    prepared = st.prepare_qat(copy.deepcopy(model), config, data=data)
    assert len(last_summary(prepared).changed) == 9
    loss = prepared(input_ids=ids, labels=ids).loss
    loss.backward()
    q = st.convert(prepared)
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 9
    out, ref = _logits(q, ids), _logits(model, ids)
    assert out.shape == ref.shape and _rel(out, ref) < 0.1
