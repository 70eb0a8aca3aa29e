"""Aggregation of n segmentation samples in one pass over them.

aggregate(probs): (n, C, H, W) class probabilities (fp32, fp16 or bf16) ->
  samples (n, H, W) uint8      per-sample argmax over classes,
  mean (C, H, W) float32       mean probabilities over the n samples (summed in fp32),
  mask (H, W) uint8            consensus: argmax of the mean,
  uncertainty (H, W) float32   normalised predictive entropy of the mean,
                               -sum_c p log max(p, 1e-12) / log C, clamped to [0, 1].

Conventions are those of ldseg_rt.pipeline.aggregate.aggregate: ties go to the lowest class index
(torch.argmax), p = 0 contributes 0 to the entropy (through the 1e-12 clamp). Beyond it, C must be
in [2, 256] (log C > 0, classes fit uint8) and n >= 1. NaN inputs are not supported.

Against that torch function in fp32: samples identical; mean and uncertainty within 1e-5
absolute (~3e-7 seen; the n-sample sum is taken in another order); consensus identical except
where the top two mean probabilities are within 1e-6 of each other. Every class is summed in the
same order here, so exactly tied inputs keep exactly tied means and the lowest class wins (torch's
mean may round such copies 1 ulp apart).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import can_launch, interpreting

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _first_argmax(tile, classes, BLOCK_C: tl.constexpr):
    """Index of the first maximum along axis 0 of a (BLOCK_C, P) tile (torch.argmax's ties)."""
    best = tl.max(tile, axis=0)
    return tl.min(tl.where(tile == best[None, :], classes[:, None], BLOCK_C), axis=0)


@triton.jit
def _finish(total, n, num_classes, log_c, pix, pmask, mean_ptr, mask_ptr, unc_ptr, spatial,
            BLOCK_C: tl.constexpr):
    """Per-class sums over the samples (BLOCK_C, P) -> mean, consensus and uncertainty stores."""
    classes = tl.arange(0, BLOCK_C)
    cmask = classes < num_classes
    mean = total / n
    tl.store(mean_ptr + classes[:, None] * spatial + pix[None, :], mean,
             mask=cmask[:, None] & pmask[None, :])
    consensus = _first_argmax(tl.where(cmask[:, None], mean, float("-inf")), classes, BLOCK_C)
    tl.store(mask_ptr + pix, consensus.to(tl.uint8), mask=pmask)
    # Padding classes have mean 0 and so add 0 here, as a class with p = 0 does.
    entropy = -tl.sum(mean * tl.log(tl.maximum(mean, 1e-12)), axis=0)
    unc = tl.minimum(tl.maximum(entropy / log_c, 0.0), 1.0)
    tl.store(unc_ptr + pix, unc, mask=pmask)


@triton.jit
def _aggregate_kernel(probs_ptr, samples_ptr, mean_ptr, mask_ptr, unc_ptr, n, num_classes, spatial,
                      log_c, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < spatial
    classes = tl.arange(0, BLOCK_C)
    cmask = classes < num_classes
    tmask = cmask[:, None] & pmask[None, :]
    # Pointers advance one sample per iteration: 64-bit, so n*C*H*W may pass 2**31.
    p_ptrs = probs_ptr + classes[:, None] * spatial + pix[None, :]
    s_ptrs = samples_ptr + pix
    total = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for _ in range(n):
        p = tl.load(p_ptrs, mask=tmask, other=0.0).to(tl.float32)
        total += p
        best = _first_argmax(tl.where(cmask[:, None], p, float("-inf")), classes, BLOCK_C)
        tl.store(s_ptrs, best.to(tl.uint8), mask=pmask)
        p_ptrs += num_classes * spatial
        s_ptrs += spatial
    _finish(total, n, num_classes, log_c, pix, pmask, mean_ptr, mask_ptr, unc_ptr, spatial, BLOCK_C)


def aggregate_reference(probs: torch.Tensor):
    """Plain torch, the conventions of ldseg_rt.pipeline.aggregate.aggregate with the mean in float32."""
    p = probs.float()
    samples = p.argmax(dim=1).to(torch.uint8)
    mean = p.mean(dim=0)
    mask = mean.argmax(dim=0).to(torch.uint8)
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)
    uncertainty = (entropy / math.log(p.shape[1])).clamp(0.0, 1.0)
    return samples, mean, mask, uncertainty


def _check_classes(name: str, num_classes: int) -> None:
    if not 2 <= num_classes <= 256:
        raise ValueError(f"{name}: the number of classes must be in [2, 256] (log C > 0, classes "
                         f"stored as uint8), got {num_classes}")


def _check_launch(name: str, t: torch.Tensor) -> None:
    if not can_launch(t):
        raise RuntimeError(f"{name}: the Triton kernel needs a CUDA tensor, or a CPU tensor with "
                           f"TRITON_INTERPRET=1 set before import; got device {t.device}")


def _blocks(num_classes: int, spatial: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): all classes and a block of pixels per program. On a GPU, at most 256
    pixels (4096 classes x pixels) keep hundreds of programs in flight for a 256x256 image; the
    interpreter runs each program as numpy steps, where fewer, larger blocks are far faster. A
    pixel's arithmetic is the same either way."""
    pixels, tile = (8192, 65536) if interpreting() else (256, 4096)
    block_c = triton.next_power_of_2(num_classes)
    block_p = max(16, min(triton.next_power_of_2(spatial), pixels, tile // block_c))
    return block_c, block_p


def _outputs(num_classes: int, h: int, w: int, device):
    """Empty mean probabilities, consensus and uncertainty for an (h, w) image."""
    return (torch.empty((num_classes, h, w), dtype=torch.float32, device=device),
            torch.empty((h, w), dtype=torch.uint8, device=device),
            torch.empty((h, w), dtype=torch.float32, device=device))


def aggregate(probs: torch.Tensor):
    """Triton aggregation of (n, C, H, W) probabilities; see the module docstring."""
    if probs.dim() != 4:
        raise ValueError(f"aggregate: probs must be (n, C, H, W), got shape {tuple(probs.shape)}")
    if probs.dtype not in _DTYPES:
        raise TypeError(f"aggregate: probs dtype must be float32, float16 or bfloat16, got {probs.dtype}")
    n, num_classes, h, w = probs.shape
    if n < 1:
        raise ValueError("aggregate: needs at least one sample, got n = 0")
    _check_classes("aggregate", num_classes)
    _check_launch("aggregate", probs)
    probs = probs.contiguous()
    samples = torch.empty((n, h, w), dtype=torch.uint8, device=probs.device)
    mean, mask, uncertainty = _outputs(num_classes, h, w, probs.device)
    if h * w:
        block_c, block_p = _blocks(num_classes, h * w)
        _aggregate_kernel[(triton.cdiv(h * w, block_p),)](
            probs, samples, mean, mask, uncertainty, n, num_classes, h * w, math.log(num_classes),
            BLOCK_C=block_c, BLOCK_P=block_p)
    return samples, mean, mask, uncertainty
