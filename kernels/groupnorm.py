"""GroupNorm with an optional fused SiLU: y = silu?((x - mean_g) / sqrt(var_g + eps) * w_c + b_c).

x is (B, C, *spatial) (e.g. NCHW; trailing dims flattened), in fp32, fp16 or bf16; mean and
(biased) variance are taken over the C/G channels and all spatial positions of a group, in fp32
whatever the input dtype, and y comes back in x's dtype.

A (batch, group) is split into chunks of BLOCK values, so the grid grows with the image, not
with batch x groups (one program per group kept 4 of an H100's 132 SMs busy for the image
encoder at batch 1). Two launches: the first takes each chunk's mean and sum of squared
deviations (two passes over the chunk, held in registers); the second merges a group's chunks
(Chan et al.'s pairwise formula, exact in exact arithmetic) and normalises its own chunk. All
values are shifted by the group's first value, so an input with a large offset (1000 + noise)
loses no precision to cancellation.

Accuracy against float64 torch.nn.functional.group_norm on the same input: fp32 output within
1e-5 (relative and absolute; ~2e-6 seen, also at 1000 + noise, where the plain fp32 reference
below is off by ~3e-4); fp16/bf16 within 1e-2, the output rounding of those dtypes (the
interpreter truncates to bf16, up to 2**-7 relative, where a GPU rounds to nearest).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import can_launch, interpreting

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _chunk_values(x_ptr, pid, n_per_group, chunks, BLOCK: tl.constexpr):
    """A program's group, its chunk's offsets and mask, and its values shifted by the group's first."""
    group = (pid // chunks).to(tl.int64)  # int64: B*C*H*W can pass 2**31
    chunk = pid % chunks
    base = group * n_per_group  # a (batch, group) is contiguous in (B, C, spatial)
    idx = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_per_group
    # x - pivot is exact for values near the pivot, so the sums see the data's spread, not its offset.
    pivot = tl.load(x_ptr + base).to(tl.float32)
    x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32) - pivot
    return group, chunk, base, idx, mask, tl.where(mask, x, 0.0)


@triton.jit
def _chunk_stats_kernel(x_ptr, part_ptr, n_per_group, chunks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    _, chunk, _, _, mask, x = _chunk_values(x_ptr, pid, n_per_group, chunks, BLOCK)
    count = tl.minimum(n_per_group - chunk * BLOCK, BLOCK).to(tl.float32)
    mean = tl.sum(x, axis=0) / count
    d = tl.where(mask, x - mean, 0.0)
    tl.store(part_ptr + 2 * pid.to(tl.int64), mean)
    tl.store(part_ptr + 2 * pid.to(tl.int64) + 1, tl.sum(d * d, axis=0))


@triton.jit
def _normalize_kernel(x_ptr, y_ptr, w_ptr, b_ptr, part_ptr, n_per_group, spatial, channels_per_group,
                      groups, chunks, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SILU: tl.constexpr, BLOCK: tl.constexpr, BLOCK_PARTS: tl.constexpr):
    pid = tl.program_id(0)
    group, _, base, idx, mask, x = _chunk_values(x_ptr, pid, n_per_group, chunks, BLOCK)
    # Every program of a group merges the group's chunk statistics itself (a few hundred at
    # most, re-read from cache), which saves a third launch.
    parts_ptr = part_ptr + 2 * group * chunks
    parts = tl.arange(0, BLOCK_PARTS)
    acc = tl.zeros([BLOCK_PARTS], dtype=tl.float32)
    for start in range(0, chunks, BLOCK_PARTS):
        i = start + parts
        count = tl.where(i < chunks, tl.minimum(n_per_group - i * BLOCK, BLOCK), 0).to(tl.float32)
        acc += count * tl.load(parts_ptr + 2 * i, mask=i < chunks, other=0.0)
    mean = tl.sum(acc, axis=0) / n_per_group
    acc = tl.zeros([BLOCK_PARTS], dtype=tl.float32)
    for start in range(0, chunks, BLOCK_PARTS):
        i = start + parts
        count = tl.where(i < chunks, tl.minimum(n_per_group - i * BLOCK, BLOCK), 0).to(tl.float32)
        d = tl.load(parts_ptr + 2 * i, mask=i < chunks, other=0.0) - mean
        acc += tl.load(parts_ptr + 2 * i + 1, mask=i < chunks, other=0.0) + count * d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_per_group + eps)

    y = (x - mean) * rstd
    channel = (group % groups) * channels_per_group + idx // spatial
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
    block = min(triton.next_power_of_2(n_per_group), _max_block())
    chunks = triton.cdiv(n_per_group, block)
    grid = (x.shape[0] * groups * chunks,)
    parts = torch.empty(grid[0] * 2, dtype=torch.float32, device=x.device)  # (mean, m2) per chunk
    num_warps = 8 if block >= 2048 else 4
    _chunk_stats_kernel[grid](x, parts, n_per_group, chunks, BLOCK=block, num_warps=num_warps)
    # Unused pointers must still be tensors; x stands in for an absent weight or bias.
    _normalize_kernel[grid](
        x, y, x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(), parts,
        n_per_group, spatial, channels // groups, groups, chunks, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK=block,
        BLOCK_PARTS=min(triton.next_power_of_2(chunks), 1024), num_warps=num_warps)
    return y


def _max_block() -> int:
    """Values per program. On a GPU 4096 (16 per thread at 8 warps, held in registers): the
    glas512 image encoder's 512x512 maps then give 256 programs per group. The interpreter
    runs programs one after another in Python, so it takes few large ones."""
    return 65536 if interpreting() else 4096
