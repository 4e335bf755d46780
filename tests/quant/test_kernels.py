"""Integer kernels (quant/kernels.py) against float references built by hand; the race `fastest` is covered in
tests/measure/test_latency.py.

Covered: ``quantize_uint8`` against ``qparams.quantize``; the oneDNN conv/linear wrappers and the per-row dynamic
products against float math on the dequantized operands; per-row and per-tensor activation quantization; int4
packing for ``aten._weight_int4pack_mm_for_cpu``; ``activation_bits`` / ``U8S8_SATURATES`` against this CPU.
"""

import platform

import pytest
import torch
import torch.nn.functional as F

from slimtorch.quant import kernels
from slimtorch.quant.qparams import choose_qparams, dequantize, minmax, quantize

# a power-of-two input scale: x * (1 / scale) and x / scale are the same float, so the kernels' uint8 codes equal
# qparams.quantize's (with an even zero point, ties too) and the float references below are exact inputs
X_SCALE = 1 / 32


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 codes and scales, as the quantized layers hold them."""
    lo, hi = minmax(w, axis=0)
    scale, zero = choose_qparams(lo, hi)
    return quantize(w, scale, zero, axis=0), scale


def _fake_input(x: torch.Tensor, scale: float, zero_point: int, qmax: int) -> torch.Tensor:
    """The float values of x's uint8 codes 0..qmax (qmax 2**bits - 1)."""
    s, z = torch.tensor(scale), torch.tensor(zero_point)
    return dequantize(quantize(x, s, z, bits=qmax.bit_length(), signed=False), s, z)


def _skip_if_saturating(x_qmax: int) -> None:
    if kernels.U8S8_SATURATES and x_qmax > 127:
        pytest.skip("uint8 codes above 127 saturate in this CPU's int8 kernels (no VNNI)")


# --- quantize_uint8 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_point", [0, 117, 128, 255])
def test_quantize_uint8_equals_qparams_quantize_off_ties(zero_point):
    x = torch.randn(8, 3, 16, 16, generator=_gen()).contiguous(memory_format=torch.channels_last) * 4
    q = kernels.quantize_uint8(x, X_SCALE, zero_point)
    ref = quantize(x, torch.tensor(X_SCALE), torch.tensor(zero_point), signed=False)
    assert q.dtype == torch.uint8 and q.shape == x.shape and q.stride() == x.stride()
    assert int(q.min()) == 0 and int(q.max()) == 255  # both ends clipped
    ties = (x / X_SCALE).frac().abs() == 0.5
    assert torch.equal(q[~ties], ref[~ties])


@pytest.mark.parametrize("zero_point,differ", [(128, False), (117, True)])
def test_at_exact_ties_quantize_uint8_differs_by_one_code_only_for_an_odd_zero_point(zero_point, differ):
    # rounding half to even after adding the zero point: parity flips with an odd zero point
    x = (torch.arange(-20, 20) + 0.5) * X_SCALE
    q = kernels.quantize_uint8(x, X_SCALE, zero_point).int()
    ref = quantize(x, torch.tensor(X_SCALE), torch.tensor(zero_point), signed=False).int()
    assert (q - ref).abs().tolist() == [1 if differ else 0] * 40


def test_quantize_uint8_agrees_with_qparams_quantize_for_any_scale_except_near_ties():
    x = torch.randn(10_000, generator=_gen(1)) * 3
    q = kernels.quantize_uint8(x, 0.03, 117).int()
    ref = quantize(x, torch.tensor(0.03), torch.tensor(117), signed=False).int()
    near_tie = ((x / 0.03).frac().abs() - 0.5).abs() < 1e-4  # where x * (1 / s) and x / s may round apart
    assert (q - ref).abs().max() <= 1
    assert torch.equal(q[~near_tie], ref[~near_tie])


# --- static int8 convolution and linear layers ----------------------------------------------------------------


@pytest.mark.parametrize("groups,stride,padding,dilation", [(1, 1, 1, 1), (2, 2, 0, 1), (8, 1, 2, 2)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("x_qmax,zero_point", [(255, 128), (127, 64)])
def test_qconv2d_equals_a_float_conv_of_the_dequantized_operands(groups, stride, padding, dilation, relu, x_qmax,
                                                                  zero_point):
    _skip_if_saturating(x_qmax)
    g = _gen()
    x = torch.randn(2, 8, 9, 9, generator=g) * 2
    qw, w_scale = _int8_weight(torch.randn(16, 8 // groups, 3, 3, generator=g))
    bias = torch.randn(16, generator=g)
    pad, st, dil = [padding] * 2, [stride] * 2, [dilation] * 2
    packed = torch.ops.onednn.qconv_prepack(qw, w_scale, X_SCALE, zero_point, st, pad, dil, groups, None)
    out = kernels.qconv2d(x, packed, X_SCALE, zero_point, w_scale, bias, st, pad, dil, groups, relu, x_qmax)
    ref = F.conv2d(_fake_input(x, X_SCALE, zero_point, x_qmax), qw.float() * w_scale.view(-1, 1, 1, 1), bias, st,
                   pad, dil, groups)
    ref = F.relu(ref) if relu else ref
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)
    if relu:
        assert float(out.min()) == 0.0


@pytest.mark.parametrize("shape", [(1, 40), (7, 40), (2, 5, 40)])
@pytest.mark.parametrize("relu,with_bias", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("x_qmax,zero_point", [(255, 128), (127, 64)])
def test_qlinear_static_equals_a_float_linear_of_the_dequantized_operands(shape, relu, with_bias, x_qmax,
                                                                          zero_point):
    _skip_if_saturating(x_qmax)
    g = _gen()
    x = torch.randn(*shape, generator=g) * 2
    qw, w_scale = _int8_weight(torch.randn(24, 40, generator=g))
    bias = torch.randn(24, generator=g) if with_bias else None
    packed = torch.ops.onednn.qlinear_prepack(qw, None)
    out = kernels.qlinear_static(x, packed, X_SCALE, zero_point, w_scale, bias, relu, x_qmax)
    ref = F.linear(_fake_input(x, X_SCALE, zero_point, x_qmax), qw.float() * w_scale[:, None], bias)
    ref = F.relu(ref) if relu else ref
    assert out.shape == (*shape[:-1], 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)


def test_qlinear_u8_is_the_exact_integer_product_with_per_channel_scales():
    qmax = 2 ** kernels.activation_bits() - 1
    g = _gen()
    qx = torch.randint(0, qmax + 1, (9, 64), generator=g, dtype=torch.uint8)
    qw = torch.randint(-127, 128, (16, 64), generator=g, dtype=torch.int8)
    w_scale = 2.0 ** -torch.randint(0, 4, (16,), generator=g).float()  # powers of two: scaling stays exact
    bias = torch.arange(16.0)
    packed = torch.ops.onednn.qlinear_prepack(qw, None)
    for zero_point in (0, 37):
        exact = (qx.long() - zero_point) @ qw.long().t()  # |sum| < 2**24: exact in float32 too
        out = kernels.qlinear_u8(qx, 1.0, zero_point, packed, w_scale, bias)
        assert torch.equal(out, exact.float() * w_scale + bias)
    assert torch.equal(kernels.qlinear_u8(qx, 1.0, 0, packed, w_scale, None, relu=True),
                       F.relu((qx.long() @ qw.long().t()).float() * w_scale))


def test_the_weight_zero_points_are_one_shared_zero_vector_per_length():
    z = kernels.weight_zeros(7)
    assert z.dtype == torch.int64 and z.tolist() == [0] * 7
    assert kernels.weight_zeros(7) is z and kernels.weight_zeros(3).shape == (3,)


# --- dynamic activations: per row and per tensor --------------------------------------------------------------


def test_quantize_rows_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 3.0, -3.0]])
    q, scale = kernels.quantize_rows(x)
    # row 0: x * 127 / 2 = [63.5, -127, 31.75]: the tie rounds to even
    assert q.dtype == torch.int8 and q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 127, -127]]
    assert scale.dtype == torch.float32 and scale.shape == (3, 1)
    torch.testing.assert_close(scale.flatten(), torch.tensor([2 / 127, 1e-12 / 127, 3 / 127]))
    qu, scale_u = kernels.quantize_rows(x, unsigned=True)
    assert qu.dtype == torch.uint8 and torch.equal(qu.int(), q.int() + 128) and torch.equal(scale_u, scale)


def test_quantize_rows_uses_the_full_range_and_errs_by_half_a_step_at_most():
    x = torch.randn(33, 200, generator=_gen()) * torch.logspace(-3, 3, 33)[:, None]  # rows of very different size
    q, scale = kernels.quantize_rows(x)
    assert (q.abs().amax(dim=1) == 127).all()
    assert ((q.float() * scale - x).abs() <= scale / 2 * (1 + 1e-5)).all()
    torch.testing.assert_close(scale.flatten(), x.abs().amax(dim=1) / 127)


@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("with_bias", [False, True])
def test_per_row_products_equal_a_float_linear_of_the_dequantized_operands(rows, with_bias):
    g = _gen()
    x = torch.randn(rows, 96, generator=g) * 3
    qw, w_scale = _int8_weight(torch.randn(40, 96, generator=g))
    bias = torch.randn(40, generator=g) if with_bias else None
    q, sx = kernels.quantize_rows(x)
    ref = F.linear(q.float() * sx, qw.float() * w_scale[:, None], bias)
    tol = {"atol": 1e-5 * float(ref.abs().max()), "rtol": 1e-5}
    torch.testing.assert_close(kernels.int_mm_rows(q, sx, qw.t().contiguous(), w_scale, bias), ref, **tol)
    if not kernels.U8S8_SATURATES:  # its codes reach 255
        qu, sxu = kernels.quantize_rows(x, unsigned=True)
        packed = torch.ops.onednn.qlinear_prepack(qw, None)
        torch.testing.assert_close(kernels.onednn_rows(qu, sxu, packed, w_scale, bias), ref, **tol)


@pytest.mark.parametrize("saturates,qmax", [(False, 255), (True, 127)])
def test_tensor_qparams_by_hand(monkeypatch, saturates, qmax):
    monkeypatch.setattr(kernels, "U8S8_SATURATES", saturates)
    scale, zp = kernels.tensor_qparams(torch.tensor([-1.0, 0.5, 3.0]))
    assert scale == pytest.approx(4 / qmax, rel=1e-6) and zp == round(qmax / 4)  # 63.75 -> 64, 31.75 -> 32
    scale, zp = kernels.tensor_qparams(torch.tensor([2.0, 5.0]))  # the range is extended to include 0
    assert scale == pytest.approx(5 / qmax, rel=1e-6) and zp == 0
    scale, zp = kernels.tensor_qparams(torch.tensor([-4.0, -1.0]))
    assert scale == pytest.approx(4 / qmax, rel=1e-6) and zp == qmax
    assert kernels.tensor_qparams(torch.zeros(5)) == (1e-12, 0)


@pytest.mark.parametrize("saturates,qmax", [(False, 255), (True, 127)])
def test_quantize_tensor_covers_the_range_within_half_a_step(monkeypatch, saturates, qmax):
    monkeypatch.setattr(kernels, "U8S8_SATURATES", saturates)
    x = torch.randn(64, 48, generator=_gen()) * 5 + 1
    q, scale, zp = kernels.quantize_tensor(x)
    assert q.dtype == torch.uint8 and int(q.min()) == 0 and int(q.max()) == qmax
    assert float(((q.float() - zp) * scale - x).abs().max()) <= scale / 2 * (1 + 1e-4)


def test_fake_dynamic_is_the_value_of_the_codes_per_row_or_per_tensor():
    x = torch.randn(6, 32, generator=_gen()) * torch.arange(1.0, 7.0)[:, None]
    q, s = kernels.quantize_rows(x)
    assert torch.equal(kernels.fake_dynamic(x, per_token=True), q.float() * s)
    qt, scale, zp = kernels.quantize_tensor(x)
    per_tensor = kernels.fake_dynamic(x, per_token=False)
    assert torch.equal(per_tensor, (qt.float() - zp) * scale)
    # one scale for the whole tensor is coarser than one per row
    assert (per_tensor - x).abs().max() > (kernels.fake_dynamic(x, per_token=True) - x).abs().max()


# --- int4 weights for the CPU kernel --------------------------------------------------------------------------


def test_int4_scales_and_zeros_layout():
    scale = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [N = 2, K // g = 3]
    sz = kernels.int4_scales_and_zeros(scale)
    assert sz.shape == (3, 2, 2) and sz.is_contiguous()
    assert torch.equal(sz[..., 0], scale.t()) and torch.equal(sz[..., 1], torch.zeros(3, 2))


@pytest.mark.parametrize("group", [32, 64])
def test_int4_packed_weight_times_x_equals_the_dequantized_weight(group):
    g = _gen()
    n, k = 32, 128
    q = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    q[0, :16] = torch.arange(-8, 8, dtype=torch.int8)  # both ends of the range for sure
    scale = 2.0 ** -torch.randint(0, 5, (n, k // group), generator=g).float()
    packed = kernels.pack_int4_for_cpu(q)
    assert packed.dtype == torch.uint8 and packed.shape == (n, k // 2)
    x = torch.randn(5, k, generator=g)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, kernels.int4_scales_and_zeros(scale))
    ref = x @ (q.float() * scale.repeat_interleave(group, dim=1)).t()
    torch.testing.assert_close(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)
    # the identity input reads the weight back: every code, scale and position where it belongs
    eye = torch.eye(k)
    w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, group, kernels.int4_scales_and_zeros(scale)).t()
    assert torch.equal(w, q.float() * scale.repeat_interleave(group, dim=1))


# --- the flag for CPUs whose uint8 x int8 products saturate ---------------------------------------------------


def test_u8s8_saturates_is_x86_without_vnni_and_activation_bits_follow_it(monkeypatch):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert kernels.U8S8_SATURATES == (x86 and not torch.cpu._is_vnni_supported())
    assert kernels.activation_bits() == (7 if kernels.U8S8_SATURATES else 8)
    for saturates, bits in ((True, 7), (False, 8)):
        monkeypatch.setattr(kernels, "U8S8_SATURATES", saturates)
        assert kernels.activation_bits() == bits


def test_the_largest_activation_codes_this_cpu_calibrates_to_multiply_exactly():
    # worst case for int16 pair sums: every code at its maximum times every weight at an extreme
    # (255 * 127 * 2 overflows int16; 127 * 128 * 2 does not), so a wrong flag shows as a wrong product
    qmax = 2 ** kernels.activation_bits() - 1
    qx = torch.full((3, 64), qmax, dtype=torch.uint8)
    for w in (127, -128):
        qw = torch.full((8, 64), w, dtype=torch.int8)
        out = kernels.qlinear_u8(qx, 1.0, 0, torch.ops.onednn.qlinear_prepack(qw, None), torch.ones(8), None)
        assert torch.equal(out, torch.full((3, 8), float(64 * qmax * w)))
