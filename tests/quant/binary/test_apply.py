import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.config import REGISTRY
from slimtorch.measure.size import count_params
from slimtorch.quant.binary.apply import choose_layers, convert_binary, prepare_binary
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear
from slimtorch.quant.binary.qat import BinaryQATConv2d, BinaryQATLinear


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=2), nn.ReLU(),
                         nn.Conv2d(16, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def test_configs_are_registered_and_validated():
    assert REGISTRY["quantize"]["binary"] is st.Binarize and REGISTRY["quantize"]["ternary"] is st.Ternarize
    assert st.Binarize.from_dict({"method": "binary", "activations": True}).activations
    with pytest.raises(st.ConfigError, match="threshold"):
        st.Ternarize(threshold=0)
    with pytest.raises(st.ConfigError, match=r"'finetune_epochs' was removed; train .*QuantAwareTraining"):
        st.Binarize(finetune_epochs=1)
    with pytest.raises(st.ConfigError, match="activations"):
        st.Binarize(activations="yes")
    assert not st.Binarize().requires_data() and not st.Ternarize().requires_data()


def test_first_last_and_unsupported_layers_stay_float():
    names, skipped = choose_layers(_cnn(), st.Binarize())
    assert names == ["2", "7"]
    assert "first layer" in skipped["0"] and "last layer" in skipped["9"] and "grouped" in skipped["5"]
    names, _ = choose_layers(_cnn(), st.Ternarize(keep_first=False, keep_last=False, exclude=("7",)))
    assert names == ["0", "2", "9"]


@pytest.mark.parametrize("config", [st.Binarize(), st.Ternarize(), st.Binarize(activations=True)],
                         ids=["binary", "ternary", "xnor"])
def test_post_training_quantize_matches_the_training_layers(config):
    model = _cnn()
    x = torch.randn(4, 1, 8, 8)
    prepared = prepare_binary(copy.deepcopy(model).eval(), config)
    assert isinstance(prepared[2], BinaryQATConv2d)
    packed = st.quantize(model.eval(), config)
    assert isinstance(packed[2], BinaryConv2d) and isinstance(packed[0], nn.Conv2d)
    assert torch.allclose(packed(x), prepared(x), atol=1e-4)


def test_prepare_then_train_then_convert_with_finetune():
    model = _mlp()
    teacher = copy.deepcopy(model)
    x = torch.randn(64, 20)
    batches = [(x[i:i + 16], teacher(x[i:i + 16]).argmax(1)) for i in range(0, 64, 16)]
    prepare_binary(model, st.Binarize(activations=True), data=batches)
    layer = model[2]
    assert isinstance(layer, BinaryQATLinear) and layer.input_shift.requires_grad
    # the activation threshold starts at the mean input of the layer on the calibration data
    hidden = torch.relu(teacher[0](x))
    assert torch.allclose(layer.input_shift.detach(), hidden.mean(0), atol=1e-5)
    before = layer.weight.detach().clone()
    st.finetune(model, batches, teacher=teacher, epochs=2)
    assert not torch.equal(before, layer.weight.detach())  # gradients reached the latent weights through the STE
    expected = model(x)
    convert_binary(model)
    assert isinstance(model[2], BinaryLinear)
    assert torch.allclose(model(x), expected, atol=1e-4)
    with pytest.raises(st.ConfigError, match="prepare_binary"):
        convert_binary(model)


def test_errors_name_the_way_out():
    with pytest.raises(st.ConfigError, match="keep_first"):
        st.quantize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), st.Binarize())
    with pytest.raises(st.DataError, match="labelled training loader"):
        st.quantize(_mlp(), st.QuantAwareTraining(target=st.Binarize()))


@pytest.mark.parametrize("config", [st.Binarize(), st.Ternarize(), st.Binarize(activations=True)],
                         ids=["binary", "ternary", "xnor"])
def test_save_load_round_trip_is_exact_and_binary_layers_are_25x_smaller(tmp_path, config):
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 300), nn.ReLU(), nn.Linear(300, 10))
    float_bytes = sum(t.numel() * 4 for t in model[2].parameters())
    st.quantize(model.eval(), config)
    path = st.save(model, tmp_path / "m")
    loaded = st.load(path, model=nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 300), nn.ReLU(),
                                                nn.Linear(300, 10)))
    assert isinstance(loaded[2], BinaryLinear) and loaded[2].manifest_args() == model[2].manifest_args()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(3, 64)
    assert torch.equal(loaded(x), model(x))
    packed_bytes = sum(t.numel() * t.element_size() for t in model[2].buffers())
    ratio = float_bytes / packed_bytes
    assert ratio >= (14 if config.mode()["ternary"] else 25), ratio
    params, nonzero = count_params(model)  # the packed layer counts its logical weights, not bytes
    assert params == (64 * 512 + 512) + (512 * 300 + 300) + (300 * 10 + 10)
    assert (nonzero < params) == config.mode()["ternary"]


def test_a_prepared_model_saves_and_loads_for_resumed_training(tmp_path):
    model = prepare_binary(_mlp(), st.Ternarize())
    path = st.save(model, tmp_path / "qat")
    loaded = st.load(path, model=_mlp())
    assert isinstance(loaded[2], BinaryQATLinear) and loaded[2].ternary
    x = torch.randn(2, 20)
    assert torch.equal(loaded(x), model(x))


def test_recipe_stages_run_through_compress(tmp_path):
    from slimtorch.recipe import recipe_from_dict

    recipe = recipe_from_dict({"stages": [{"quantize": {"method": "ternary", "threshold": 0.5}}]})
    assert list(recipe.stages) == [st.Ternarize(threshold=0.5)]
    model = _mlp().eval()
    x = torch.randn(4, 20)
    st.compress(model, recipe, example_inputs=x, out_dir=tmp_path / "run")
    assert isinstance(model[2], BinaryLinear) and model[2].ternary


@pytest.mark.slow
def test_qat_on_the_zoo_mlp_meets_the_accuracy_targets(digits_mlp):
    model, data = digits_mlp
    base = data.evaluate(model)
    for target, allowed in [(st.Ternarize(), 0.02), (st.Binarize(activations=True), 0.08)]:
        config = st.QuantAwareTraining(target=target, epochs=1)
        student = st.quantize(copy.deepcopy(model), config, data=data)
        assert isinstance(student.fc2, BinaryLinear) and type(student.fc1) is nn.Linear  # first/last stay float
        assert base - data.evaluate(student) <= allowed, config


def test_post_training_refreshes_batchnorm_statistics_on_the_calibration_data():
    model = _cnn().eval()
    batch = torch.randn(16, 1, 8, 8)
    st.quantize(model, st.Binarize(), data=[batch])
    with torch.no_grad():
        pre_bn = model[2](model[1](model[0](batch)))  # the binarized conv's output feeds the BatchNorm
    assert torch.allclose(model[3].running_mean, pre_bn.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[3].running_var, pre_bn.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert model[3].momentum == 0.1 and not model.training


@pytest.mark.parametrize("config", [st.Binarize(activations=True), st.Ternarize()], ids=["xnor", "ternary"])
def test_public_prepare_qat_and_convert_dispatch_to_the_binary_family(config):
    model = _mlp()
    st.prepare_qat(model, config)
    assert isinstance(model[2], BinaryQATLinear) and type(model[0]) is nn.Linear
    x = torch.randn(8, 20)
    batches = [(x, torch.randint(0, 3, (8,)))]
    st.finetune(model, batches, epochs=1)
    expected = model(x)
    st.convert(model)
    assert isinstance(model[2], BinaryLinear) and not model.training
    assert torch.allclose(model(x), expected, atol=1e-4)
