import pytest
import torch
from torch import nn

from slimtorch.lowrank import conv
from slimtorch.lowrank.calibrate import input_rows, output_error, record, reference_outputs, sensitivity
from slimtorch.lowrank.layers import Layer


@pytest.mark.parametrize("padding", [1, (0, 2), "same"])
def test_input_rows_are_what_the_matrix_view_multiplies(padding):
    torch.manual_seed(0)
    c = nn.Conv2d(4, 6, 3, padding=padding, bias=False).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    y = c(x)  # (B, out, H, W)
    rows = input_rows(Layer("c", c, "svd"), x)  # (B*H*W, in*kh*kw)
    expected = y.movedim(1, -1).reshape(-1, 6)
    assert torch.allclose(rows @ conv.channel_matrix(c.weight).T, expected, atol=1e-10)
    # spatial SVD: each row is one (in, kh) column patch; M's (out, kw) rows sum over the column taps
    rows = input_rows(Layer("c", c, "spatial_svd"), x)
    assert rows.shape[1] == 4 * 3
    tucker_rows = input_rows(Layer("c", c, "tucker"), x)
    assert torch.allclose(tucker_rows, x.movedim(1, -1).reshape(-1, 4))


def test_record_sets_positions_and_the_inputs_second_moment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Conv2d(1, 4, 3, stride=2, padding=1)).eval()
    lin = Layer("0", model[0], "svd")
    batches = [torch.randn(5, 3, 8) for _ in range(3)]
    record(nn.Sequential(model[0]), [lin], batches, moments=True)
    assert lin.in_positions == lin.out_positions == 15
    x = torch.cat([b.reshape(-1, 8) for b in batches]).double()
    assert torch.allclose(lin.white.sqrt @ lin.white.sqrt.T, x.T @ x / x.shape[0], atol=1e-8)
    conv_layer = Layer("2", model[2], "spatial_svd")
    record(model[2], [conv_layer], [torch.randn(2, 1, 9, 10)], moments=False)
    assert (conv_layer.in_positions, conv_layer.out_positions, conv_layer.mid_positions) == (180, 50, 100)


def test_sensitivity_restores_the_layer_and_errors_grow_as_rank_falls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    original = model[0]
    batches = [torch.randn(16, 32) for _ in range(2)]
    ref = reference_outputs(model, batches)
    errors = sensitivity(model, Layer("0", model[0], "svd"), [2, 8, 32], batches, ref)
    assert model[0] is original and output_error(model, batches, ref) == 0.0
    assert errors[32] < 1e-10 and errors[8] < errors.get(2, float("inf"))
