"""GroupNorm with an optional fused SiLU: y = silu?((x - mean_g) / sqrt(var_g + eps) * w_c + b_c).

x is (B, C, *spatial) (e.g. NCHW; trailing dims flattened), in fp32, fp16 or bf16; mean and
(biased) variance are taken over the C/G channels and all spatial positions of a group, in fp32
whatever the input dtype, and y comes back in x's dtype. One program normalises one (batch,
group) and loops over it in blocks, so groups of any size (32 channels x 64x64 = 131072 values)
fit. Statistics are two-pass and shifted by the group's first value, so an input with a large
offset (1000 + noise) loses no precision to cancellation.

Accuracy against float64 torch.nn.functional.group_norm on the same input: fp32 output within
1e-5 (relative and absolute; ~2e-6 seen, also at 1000 + noise, where the plain fp32 reference
below is off by ~3e-4); fp16/bf16 within 1e-2, the output rounding of those dtypes (the
interpreter truncates to bf16, up to 2**-7 relative, where a GPU rounds to nearest).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import can_launch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK = 4096


@triton.jit
def _group_norm_kernel(x_ptr, y_ptr, w_ptr, b_ptr, n_per_group, spatial, channels_per_group,
                       groups, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SILU: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64: B*C*H*W can pass 2**31
    base = pid * n_per_group  # a (batch, group) is contiguous in (B, C, spatial)
    first_channel = (pid % groups) * channels_per_group
    offs = tl.arange(0, BLOCK)
    # Shift by one value of the group: x - pivot is exact for nearby values, so the sums
    # below see the spread of the data, not its offset.
    pivot = tl.load(x_ptr + base).to(tl.float32)

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_per_group, BLOCK):
        idx = start + offs
        mask = idx < n_per_group
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(mask, x - pivot, 0.0)
    shifted_mean = tl.sum(acc, axis=0) / n_per_group

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_per_group, BLOCK):
        idx = start + offs
        mask = idx < n_per_group
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, (x - pivot) - shifted_mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_per_group + eps)

    for start in range(0, n_per_group, BLOCK):
        idx = start + offs
        mask = idx < n_per_group
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        y = ((x - pivot) - shifted_mean) * rstd
        channel = first_channel + idx // spatial
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_reference(x: torch.Tensor, groups: int, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float, silu: bool = False) -> torch.Tensor:
    """Plain torch: statistics in fp32 whatever x's dtype, output in x's dtype."""
    shape = x.shape
    xg = x.float().reshape(shape[0], groups, -1)
    mean = xg.mean(dim=2, keepdim=True)
    var = xg.var(dim=2, unbiased=False, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(shape[0], shape[1], -1)
    if weight is not None:
        y = y * weight.float()[:, None]
    if bias is not None:
        y = y + bias.float()[:, None]
    if silu:
        y = torch.nn.functional.silu(y)
    return y.reshape(shape).to(x.dtype)


def _check_param(name: str, t: torch.Tensor | None, channels: int) -> None:
    if t is None:
        return
    if t.shape != (channels,):
        raise ValueError(f"group_norm: {name} must have shape ({channels},), got {tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"group_norm: {name} dtype must be float32, float16 or bfloat16, got {t.dtype}")


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    """Triton GroupNorm (+ SiLU) of x (B, C, *spatial); see the module docstring."""
    if x.dim() < 2:
        raise ValueError(f"group_norm: x must be (B, C, *spatial), got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"group_norm: x dtype must be float32, float16 or bfloat16, got {x.dtype}")
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ValueError(f"group_norm: channels ({channels}) must be divisible by groups ({groups})")
    _check_param("weight", weight, channels)
    _check_param("bias", bias, channels)
    params = [t for t in (weight, bias) if t is not None]
    if not can_launch(x, *params):
        raise RuntimeError("group_norm: the Triton kernel needs x, weight and bias on one CUDA device, "
                           "or on the CPU with TRITON_INTERPRET=1 set before import; got devices "
                           f"{sorted({str(t.device) for t in (x, *params)})}")
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    spatial = x[0, 0].numel()
    n_per_group = channels // groups * spatial
    block = min(triton.next_power_of_2(n_per_group), _MAX_BLOCK)
    # Unused pointers must still be tensors; x stands in for an absent weight or bias.
    _group_norm_kernel[(x.shape[0] * groups,)](
        x, y, x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(),
        n_per_group, spatial, channels // groups, groups, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK=block,
        num_warps=8 if block >= 2048 else 4)
    return y
