"""Philox4x32-10 normal noise drawn inside Triton kernels, the stream of csrc/philox.h.

The noise of element e of a sample's latent is element e of the draw (seed, sample, step,
stream): counter (e // 4, step, sample, stream), key (seed low word, seed high word), lane
e % 4 of the Box-Muller pairs (r0, r1), (r2, r3) in float64. The device functions here are
what the step kernel (diffusion_step.py) draws its noise with; `philox_normal` launches
them alone, and `philox_normal_reference` is the same draw in plain torch.

Precision: the Philox words are bit-exact. Under the interpreter the normals are bit-identical
to the C++ ones where numpy's float64 log/cos/sin are glibc's (x86-64 without AVX-512, where
numpy has its own SIMD log); compiled for a GPU they come from libdevice, a few ulp from glibc.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_int, default_device, require_launch, uint_words

_MASK32 = 0xFFFFFFFF
BLOCK = 1024  # elements per loop iteration of a row; a multiple of 4 (one Philox block = 4 elements)
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments (Weyl sequence)

_PHILOX_M0 = tl.constexpr(_PHILOX_M[0])
_PHILOX_M1 = tl.constexpr(_PHILOX_M[1])
_PHILOX_W0 = tl.constexpr(_PHILOX_W[0])
_PHILOX_W1 = tl.constexpr(_PHILOX_W[1])
_TWO_M32 = tl.constexpr(2.0**-32)
_TWO_PI = tl.constexpr(2.0 * math.pi)  # the double nearest 2 pi, as kTwoPi in csrc/philox.h


@triton.jit
def _mulhilo(m, x):
    # The full 64-bit product is exact; integer ops stay clear of uint32 overflow (which
    # TRITON_DEBUG's overflow sanitiser would flag) and compile to one wide multiply.
    product = x.to(tl.uint64) * m
    return (product >> 32).to(tl.uint32), product.to(tl.uint32)


@triton.jit
def _philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 words (csrc/philox.h)."""
    for r in tl.static_range(10):
        if r > 0:  # the key is bumped, mod 2^32, before every round but the first
            k0 = (k0.to(tl.uint64) + _PHILOX_W0).to(tl.uint32)
            k1 = (k1.to(tl.uint64) + _PHILOX_W1).to(tl.uint32)
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _box_muller(r_radius, r_angle):
    # (r + 0.5) * 2^-32 is exact in double and strictly inside (0, 1); same operation order as C++.
    u_radius = (r_radius.to(tl.float64) + 0.5) * _TWO_M32
    u_angle = (r_angle.to(tl.float64) + 0.5) * _TWO_M32
    radius = tl.sqrt(-2.0 * tl.log(u_radius))
    theta = _TWO_PI * u_angle
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def _row_key(seeds_ptr, samples_ptr, row):
    seed = tl.load(seeds_ptr + row)  # int64 holding the uint64 bit pattern
    k0 = seed.to(tl.uint32)  # truncation keeps the low word
    k1 = (seed >> 32).to(tl.uint32)  # the sign-extended high bits are truncated away
    sample = tl.load(samples_ptr + row).to(tl.uint32)
    return k0, k1, sample


@triton.jit
def _normals(first, k0, k1, sample, step, stream, BLOCK: tl.constexpr):
    """Normals (float64, BLOCK) of elements first .. first + BLOCK - 1; first is a multiple of 4."""
    q = (first // 4 + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK // 4], tl.uint32)
    r0, r1, r2, r3 = _philox4x32(q, zero + step, zero + sample, zero + stream, zero + k0, zero + k1)
    n0, n1 = _box_muller(r0, r1)
    n2, n3 = _box_muller(r2, r3)
    # Interleave to element order: [q, k, j] = lane 2 k + j, flattened q-major.
    lanes = tl.join(tl.join(n0, n2), tl.join(n1, n3))
    return tl.reshape(lanes, [BLOCK])


@triton.jit(do_not_specialize=["step", "stream"])
def _normal_kernel(seeds_ptr, samples_ptr, out_ptr, numel, step, stream, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    first = tl.program_id(1) * BLOCK
    k0, k1, sample = _row_key(seeds_ptr, samples_ptr, row)
    noise = _normals(first, k0, k1, sample, step.to(tl.uint32), stream.to(tl.uint32), BLOCK)
    offs = first + tl.arange(0, BLOCK)
    tl.store(out_ptr + row.to(tl.int64) * numel + offs, noise, mask=offs < numel)


def philox_normal(seeds, samples, step: int, stream: int, numel: int, device=None) -> torch.Tensor:
    """Standard normals, float64 (B, numel): row b is the draw (seeds[b], samples[b], step,
    stream) of the C++ stream. seeds: uint64 ints or an int64 tensor of the bit pattern;
    samples: uint32 ints or an int tensor; device defaults to the seeds tensor's, else the CPU."""
    device = default_device(seeds, device)
    seeds_t = uint_words(seeds, "seeds", 64, device)
    samples_t = uint_words(samples, "samples", 32, device, rows=len(seeds_t))
    step, stream = check_int(step, "step"), check_int(stream, "stream")
    numel = check_int(numel, "numel", 31)
    res = torch.empty(len(seeds_t), numel, dtype=torch.float64, device=device)
    require_launch(seeds_t, samples_t, res)
    if numel:
        grid = (len(seeds_t), triton.cdiv(numel, BLOCK))
        _normal_kernel[grid](seeds_t, samples_t, res, numel, step, stream, BLOCK=BLOCK)
    return res


def _mulhilo_torch(m: int, x: torch.Tensor):
    """(high, low) words of m * x for m, x < 2^32, exactly in int64 via 16-bit halves of x."""
    a = m * (x & 0xFFFF)  # < 2^48
    b = m * (x >> 16)  # < 2^48
    return ((a >> 16) + b) >> 16, (a + ((b & 0xFFFF) << 16)) & _MASK32


def _philox_torch(c0, c1, c2, c3, k0, k1):
    for r in range(10):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & _MASK32, (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo_torch(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo_torch(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_normal_reference(seeds: torch.Tensor, samples: torch.Tensor, step: int, stream: int, numel: int):
    """The same draws as philox_normal, in plain torch; float64 (B, numel). seeds: int64
    tensor of the uint64 bit pattern, samples: int64 tensor."""
    q = torch.arange(-(-numel // 4), dtype=torch.int64, device=seeds.device).expand(len(seeds), -1)
    k0, k1 = (seeds & _MASK32)[:, None], ((seeds >> 32) & _MASK32)[:, None]
    words = _philox_torch(q, torch.full_like(q, step), samples[:, None].expand_as(q),
                          torch.full_like(q, stream), k0, k1)
    u = [(w.double() + 0.5) * 2.0**-32 for w in words]
    lanes = []
    for radius_word, angle_word in ((u[0], u[1]), (u[2], u[3])):
        radius = torch.sqrt(-2.0 * torch.log(radius_word))
        theta = 2.0 * math.pi * angle_word
        lanes += [radius * torch.cos(theta), radius * torch.sin(theta)]
    return torch.stack(lanes, dim=-1).reshape(len(seeds), -1)[:, :numel]
