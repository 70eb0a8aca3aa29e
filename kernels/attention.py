"""Multi-head attention, softmax(q k^T * scale) v, as a flash-style Triton kernel.

q is (B, H, T, D); k and v are (B, H, S, D), S may differ from T; scale defaults to D**-0.5.
Non-causal, forward only. Flash-style: each program holds a block of query rows and walks
over k/v in blocks with an online softmax (a running row max and row sum, the accumulator
rescaled whenever the max grows), so the T x S score matrix is never materialised. LDSeg's
image encoder attends over 4096 tokens with 8 heads of dim 8: its scores would be ~170 times
the size of q, k and v together, and writing and re-reading them would dominate the op.
Subtracting the running max before every exponential also keeps large logits finite.

Scores, exponentials and the accumulator are fp32 whatever the input dtype (fp32, fp16 or
bf16); the output comes back in the input dtype. Tolerance, as max abs error over max abs
float64 reference on the same inputs: 1e-5 for fp32 (IEEE fp32 dots, never TF32); 5e-3 for
fp16 and 2e-2 for bf16, where rounding the output and the softmax weights fed to the second
matmul to the input dtype dominates (bf16 keeps 8 significant bits; the interpreter's
fp32 -> bf16 cast truncates instead of rounding, doubling that share).

`attention_reference` is the same computation in plain torch (fp32), for tests and fallbacks.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import can_launch, interpreting

__all__ = ["attention", "attention_reference"]

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, heads, tokens, head_dim), "
                             f"got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    for axis, what in ((0, "batch size"), (1, "number of heads"), (3, "head dim")):
        if q.shape[axis] != k.shape[axis]:
            raise ValueError(f"attention: q and k/v must have the same {what}, got q {tuple(q.shape)}, "
                             f"k/v {tuple(k.shape)}")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v in plain torch, computed in fp32 and returned in q's dtype."""
    _check_shapes(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    heads, T, S, D, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_TYPE: tl.constexpr,
):
    # A flat grid, query blocks fastest: neighbouring programs read the same head's k/v
    # (cache reuse), and batch * heads is not bound by the 65535 limit of grid axes 1 and 2.
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(T, BLOCK_M)
    pid_m = pid % m_blocks
    bh = pid // m_blocks
    # int64 head offsets: batch * heads * tokens * dim can pass 2**31 elements.
    off_b = (bh // heads).to(tl.int64)
    off_h = (bh % heads).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    o_ptr += off_b * stride_ob + off_h * stride_oh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < T
    dim_ok = dims < D  # D is padded up to BLOCK_D; zero padding adds nothing to q.k or to the output

    q = tl.load(q_ptr + rows[:, None] * stride_qt + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(DOT_TYPE)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max, in log2 units
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum of exponentials
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, S, BLOCK_N):
        keys = start_n + cols
        key_ok = keys < S
        # k is loaded transposed, (BLOCK_D, BLOCK_N), ready for q @ k^T.
        k_t = tl.load(k_ptr + keys[None, :] * stride_ks + dims[:, None] * stride_kd,
                      mask=dim_ok[:, None] & key_ok[None, :], other=0.0).to(DOT_TYPE)
        # "ieee" keeps fp32 inputs off TF32 (~1e-3 error); fp16/bf16 tensor-core dots ignore it.
        # scale * log2(e) is folded in, so exp2 gives the softmax's exp.
        s = tl.dot(q, k_t, input_precision="ieee") * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))  # every block holds at least one real key
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max; 0 at the start
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + keys[:, None] * stride_vs + dims[None, :] * stride_vd,
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0).to(DOT_TYPE)
        # The weights are rounded to the input dtype, as the tensor cores take them, on every path.
        p = p.to(v_ptr.dtype.element_ty).to(DOT_TYPE)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_ptr + rows[:, None] * stride_ot + dims[None, :] * stride_od,
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def _config(head_dim: int, dtype: torch.dtype, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps), one fixed choice per head dim and dtype, no autotuning.

    BLOCK_D is D padded to a power of two >= 16, the smallest tl.dot takes. On a GPU the tiles
    are the largest that ptxas compiles without spilling registers to local memory, measured
    with triton 3.9 for sm_90a at num_warps=8, num_stages=2 (tests/kernels/test_attention_kernel.py
    recompiles them ahead of time; benchmarks/gpu_check.py reads the spills on the GPU). fp32
    dots in "ieee" run on the FMA units, not the tensor cores, and hold their operands in
    registers, so they take smaller tiles (the spills and register counts are in
    benchmarks/RESULTS.md, "Triton kernels"). The interpreter pays a fixed Python cost per loop
    step whatever the tile, so it takes the largest tiles numpy handles quickly.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreted:
        return 512, 256, block_d, 4
    if dtype == torch.float32:
        return (128, 64, block_d, 8) if block_d == 16 else (64, 32, block_d, 8)
    return (128, 64, block_d, 8) if block_d <= 64 else (64, 64, block_d, 8)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v by the Triton kernel; q (B, H, T, D), k and v (B, H, S, D),
    fp32/fp16/bf16, D from 1 to 128, any strides. Returns (B, H, T, D) in q's dtype."""
    _check_shapes(q, k, v)
    if q.dtype not in _TL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"attention: q, k and v must share one dtype of float32, float16 or bfloat16, "
                        f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"attention: q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not can_launch(q, k, v):
        raise RuntimeError(f"attention: the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 set "
                           f"before ldseg_rt.kernels is imported to run on the CPU; got a {q.device} tensor")
    batch, heads, tokens, head_dim = q.shape
    keys = k.shape[2]
    if not 1 <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim must be 1 to {_MAX_HEAD_DIM}, got {head_dim}")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if keys == 0:
        raise ValueError("attention: k and v have no tokens, so the softmax has nothing to normalise")
    block_m, block_n, block_d, num_warps = _config(head_dim, q.dtype, interpreting())
    grid = (triton.cdiv(tokens, block_m) * batch * heads,)
    _attention_kernel[grid](
        q, k, v, out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, tokens, keys, head_dim, scale * _LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        # The interpreter's tl.dot multiplies bf16 as raw uint16 bits (triton-lang/triton#11584,
        # unsupported there); fp32 operands hold bf16 values exactly.
        DOT_TYPE=tl.float32 if interpreting() and q.dtype == torch.bfloat16 else _TL_DTYPES[q.dtype],
        num_warps=num_warps, num_stages=2,
    )
    return out
