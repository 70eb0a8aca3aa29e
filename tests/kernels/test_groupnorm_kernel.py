"""The Triton GroupNorm(+SiLU) kernel against float64 torch.nn.functional.group_norm (then SiLU
in float64) on fresh random inputs. Tolerances: fp32 1e-5 (relative and absolute, outputs are
O(1)); fp16/bf16 1e-2, their output rounding (bf16 keeps 8 significant bits)."""
import pytest
import torch
import torch.nn.functional as F

import ldseg_rt.kernels.groupnorm as groupnorm_module
from ldseg_rt.kernels.groupnorm import group_norm, group_norm_reference
from ldseg_rt.models.layers import KERAS_EPS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def make(rng, shape, dtype=torch.float32, offset=0.0, scale=1.0):
    return torch.from_numpy(offset + scale * rng.standard_normal(shape)).to(DEVICE, dtype)


def expected(x, groups, weight, bias, eps, silu):
    """Independent float64 result from the same (rounded) input and parameters."""
    y = F.group_norm(x.double(), groups, None if weight is None else weight.double(),
                     None if bias is None else bias.double(), eps)
    return F.silu(y) if silu else y


def check(got, x, groups, weight, bias, eps, silu):
    assert got.shape == x.shape and got.dtype == x.dtype
    tol = TOL[x.dtype]
    torch.testing.assert_close(got.double(), expected(x, groups, weight, bias, eps, silu), rtol=tol, atol=tol)


@pytest.mark.parametrize("channels,groups", [(12, 3), (6, 6), (5, 1), (32, 8)])
@pytest.mark.parametrize("hw", [(1, 1), (3, 17), (33, 1), (17, 33), (64, 64)])
def test_fp32_shapes(rng, channels, groups, hw):
    batch = 3 if hw[0] * hw[1] < 1000 else 1
    x = make(rng, (batch, channels, *hw))
    weight, bias = make(rng, (channels,)), make(rng, (channels,))
    silu = bool(rng.integers(2))
    check(group_norm(x, groups, weight, bias, KERAS_EPS, silu=silu), x, groups, weight, bias, KERAS_EPS, silu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_dtypes_and_options(rng, dtype, silu, affine):
    x = make(rng, (3, 12, 17, 3), dtype, offset=0.5, scale=2.0)
    weight = make(rng, (12,)) if affine != "none" else None  # fp32 parameters, as under autocast
    bias = make(rng, (12,)) if affine == "both" else None
    for eps in (KERAS_EPS, 1e-5):
        check(group_norm(x, 3, weight, bias, eps, silu=silu), x, 3, weight, bias, eps, silu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_parameters(rng, dtype):
    x = make(rng, (2, 6, 9, 5), dtype)
    weight, bias = make(rng, (6,), dtype), make(rng, (6,), dtype)
    check(group_norm(x, 2, weight, bias, KERAS_EPS, silu=True), x, 2, weight, bias, KERAS_EPS, True)


def test_large_group_with_offset(rng):
    """32 channels x 64x64 = 131072 values a group, about 1000 + noise: fp32 statistics lose
    nothing to the offset (naive fp32 statistics, as in group_norm_reference, are off by ~3e-4)."""
    x = make(rng, (1, 64, 64, 64), offset=1000.0)
    weight, bias = make(rng, (64,)), make(rng, (64,))
    check(group_norm(x, 2, weight, bias, KERAS_EPS, silu=True), x, 2, weight, bias, KERAS_EPS, True)


def test_groups_split_into_chunks(rng, monkeypatch):
    """Blocks of 64 values, so a group of 2 x 17 x 13 = 442 spans 7 chunks, the last ragged
    (58), whose statistics are merged; at 1000 + noise."""
    monkeypatch.setattr(groupnorm_module, "_max_block", lambda: 64)
    x = make(rng, (1, 6, 17, 13), offset=1000.0)
    weight, bias = make(rng, (6,)), make(rng, (6,))
    check(group_norm(x, 3, weight, bias, KERAS_EPS, silu=True), x, 3, weight, bias, KERAS_EPS, True)


@pytest.mark.parametrize("offset,scale", [(1000.0, 1.0), (-3e4, 10.0), (100.0, 1e-2)])
def test_offset_inputs(rng, offset, scale):
    x = make(rng, (3, 6, 17, 33), offset=offset, scale=scale)
    check(group_norm(x, 3, None, None, KERAS_EPS * scale ** 2, silu=False), x, 3, None, None,
          KERAS_EPS * scale ** 2, False)


@pytest.mark.parametrize("shape", [(4, 12), (3, 12, 1), (2, 12, 37), (1, 12, 3, 4, 5)])
def test_any_spatial_rank(rng, shape):
    x = make(rng, shape)
    weight, bias = make(rng, (12,)), make(rng, (12,))
    check(group_norm(x, 4, weight, bias, 1e-5, silu=True), x, 4, weight, bias, 1e-5, True)


def test_non_contiguous_input(rng):
    x = make(rng, (2, 5, 7, 6)).transpose(2, 3)
    assert not x.is_contiguous()
    check(group_norm(x, 5, None, None, KERAS_EPS), x, 5, None, None, KERAS_EPS, False)


def test_constant_group_is_bias(rng):
    """Zero variance: (x - mean) = 0 exactly, so the output is the bias (eps keeps rstd finite)."""
    x = torch.full((2, 4, 5, 5), 7.25, device=DEVICE)
    bias = make(rng, (4,))
    got = group_norm(x, 2, make(rng, (4,)), bias, KERAS_EPS)
    torch.testing.assert_close(got, bias[None, :, None, None].expand_as(x), rtol=0, atol=0)


def test_empty_inputs():
    for shape in [(0, 6, 4, 4), (2, 6, 0, 4)]:
        x = torch.empty(shape, device=DEVICE)
        y = group_norm(x, 3)
        assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("silu", [False, True])
def test_reference_matches_float64(rng, dtype, silu):
    x = make(rng, (3, 12, 17, 9), dtype)
    weight, bias = make(rng, (12,)), make(rng, (12,))
    check(group_norm_reference(x, 3, weight, bias, KERAS_EPS, silu), x, 3, weight, bias, KERAS_EPS, silu)


def test_errors(monkeypatch):
    x = torch.zeros(2, 12, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"channels \(12\) must be divisible by groups \(5\)"):
        group_norm(x, 5)
    with pytest.raises(ValueError, match=r"divisible by groups \(0\)"):
        group_norm(x, 0)
    with pytest.raises(ValueError, match=r"x must be \(B, C, \*spatial\)"):
        group_norm(torch.zeros(12, device=DEVICE), 3)
    with pytest.raises(TypeError, match="x dtype must be float32, float16 or bfloat16, got torch.float64"):
        group_norm(x.double(), 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(12,\), got \(6,\)"):
        group_norm(x, 3, weight=torch.ones(6, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias must have shape \(12,\), got \(12, 1\)"):
        group_norm(x, 3, bias=torch.ones(12, 1, device=DEVICE))
    with pytest.raises(TypeError, match="bias dtype"):
        group_norm(x, 3, bias=torch.ones(12, dtype=torch.int64, device=DEVICE))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"needs x, weight and bias on one CUDA device.*\['cpu'\]"):
        group_norm(x.cpu(), 3)
