"""One diffusion sampling step as a single Triton kernel, with its Philox noise drawn in-kernel.

For every batch row b (one sample's whole latent), with the step table row
(t_model, a_t, s_t, c_x0, c_eps, c_z, sigma) of ldseg_rt.diffusion.tables:

    (x0, eps) from the model output   eps: x0 = (z - s eps) / a;  x: eps = (z - a x0) / s (0 if s = 0);
                                      v:   x0 = a z - s v, eps = s z + a v
    clip > 0                          x0 = clamp(x0, -clip, clip), eps re-derived from the clamped x0
    z_prev = c_x0 x0 + c_eps eps + c_z z + sigma noise
    renormalize                       z_prev = (z_prev - mean) / (std + RENORM_EPS), population std per row

noise is the Philox draw (seeds[b], samples[b], step, STREAM_STEP) of kernels/philox.py;
`initial_noise` is the draw (step 0, STREAM_INIT), renormalised. This is the stream of
csrc/philox.h, so a loop of `initial_noise` + `diffusion_step` follows the C++ sampler.
The constants come from ldseg_rt.diffusion.constants, the one source the C++ shares.

Precision: the step computes in float64 from float32 z and the model output, with the
coefficients rounded to float32 (Triton passes Python floats as fp32), and returns float32:
within 1e-5 of max|z_prev| of the float64 oracle (measured: under 1e-6), and a K-step loop
stays within 1e-5 of the C++ loop, which keeps its state in double.

`diffusion_step_reference` is the plain torch twin (float64 inside, same signature). The
coefficients are Python floats, so a caller that captures a whole K-step loop in one CUDA graph
bakes each step's constants in; seeds and samples should then be device tensors.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ldseg_rt.diffusion.constants import COLUMN, PREDICTIONS, RENORM_EPS, STREAM_INIT, STREAM_STEP
from ldseg_rt.diffusion.renormalize import renormalize as renormalized

from ._launch import check_int, default_device, require_launch, uint_words
from .philox import BLOCK, _normals, _row_key, philox_normal_reference

_EPS = tl.constexpr(RENORM_EPS)


@triton.jit(do_not_specialize=["step", "stream"])
def _step_kernel(z_ptr, out_ptr, res_ptr, seeds_ptr, samples_ptr, numel, step, stream,
                 a, s, c_x0, c_eps, c_z, sigma, clip,
                 PREDICTION: tl.constexpr,  # 0 eps, 1 x, 2 v
                 FROM_NOISE: tl.constexpr,  # z_prev = noise (the initial latent)
                 NOISE: tl.constexpr, CLIP: tl.constexpr, S_POSITIVE: tl.constexpr,
                 RENORM: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: pass 1 writes the update and sums it; with RENORM, pass 2 sums
    squared deviations from the mean and pass 3 rescales in place."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * numel
    k0, k1, sample = _row_key(seeds_ptr, samples_ptr, row)
    step32 = step.to(tl.uint32)
    stream32 = stream.to(tl.uint32)
    acc = tl.zeros([BLOCK], tl.float64)
    for first in range(0, numel, BLOCK):
        offs = first + tl.arange(0, BLOCK)
        mask = offs < numel
        if FROM_NOISE:
            new = _normals(first, k0, k1, sample, step32, stream32, BLOCK)
        else:
            z = tl.load(z_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
            o = tl.load(out_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
            if PREDICTION == 0:
                x0 = (z - s * o) / a
                eps = o
            elif PREDICTION == 1:
                x0 = o
                if S_POSITIVE:
                    eps = (z - a * x0) / s
                else:
                    eps = tl.zeros_like(z)
            else:
                x0 = a * z - s * o
                eps = s * z + a * o
            if CLIP:
                x0 = tl.minimum(tl.maximum(x0, -clip), clip)
                if S_POSITIVE:
                    eps = (z - a * x0) / s
                else:
                    eps = tl.zeros_like(z)
            new = c_x0 * x0 + c_eps * eps + c_z * z
            if NOISE:
                new += sigma * _normals(first, k0, k1, sample, step32, stream32, BLOCK)
        new = new.to(tl.float32)
        tl.store(res_ptr + base + offs, new, mask=mask)
        acc += tl.where(mask, new.to(tl.float64), 0.0)  # the mean of the values stored
    if RENORM:
        mean = tl.sum(acc, axis=0) / numel
        # Passes 2 and 3 read values that other threads of this program wrote (and pass 3
        # overwrites values they read in pass 2): each pass waits for the last.
        tl.debug_barrier()
        acc = tl.zeros([BLOCK], tl.float64)
        for first in range(0, numel, BLOCK):
            offs = first + tl.arange(0, BLOCK)
            mask = offs < numel
            dev = tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(tl.float64) - mean
            acc += tl.where(mask, dev * dev, 0.0)
        scale = 1.0 / (tl.sqrt(tl.sum(acc, axis=0) / numel) + _EPS)
        tl.debug_barrier()
        for first in range(0, numel, BLOCK):
            offs = first + tl.arange(0, BLOCK)
            mask = offs < numel
            dev = tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(tl.float64) - mean
            tl.store(res_ptr + base + offs, (dev * scale).to(tl.float32), mask=mask)


def _check_step(z, out, seeds, samples, step, row, prediction, clip):
    """Validated (seeds, samples, coefficients, clip) of a step; raises naming the bad argument."""
    if not isinstance(z, torch.Tensor) or not isinstance(out, torch.Tensor):
        raise TypeError(f"z and out must be torch tensors, got {type(z).__name__} and {type(out).__name__}")
    if z.dtype != torch.float32:
        raise TypeError(f"z must be float32, got {z.dtype}")
    if not out.dtype.is_floating_point:
        raise TypeError(f"the model output must be a float tensor, got {out.dtype}")
    if z.ndim < 2 or not 1 <= z.shape[0] or not 1 <= math.prod(z.shape[1:]) < 2**31:
        raise ValueError(f"z must have shape (B, ...) with B >= 1 and 1 to 2^31 - 1 elements per row, "
                         f"got {tuple(z.shape)}")
    if out.shape != z.shape:
        raise ValueError(f"the model output has shape {tuple(out.shape)}, z has {tuple(z.shape)}; they must match")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
    check_int(step, "step")
    coeffs = tuple(float(c) for c in row)
    if len(coeffs) != len(COLUMN) or not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"row must be 7 finite floats (t_model, a_t, s_t, c_x0, c_eps, c_z, sigma), got {row!r}")
    _, a, s = coeffs[:3]
    if a < 0 or s < 0:
        raise ValueError(f"a_t and s_t must be >= 0, got {a} and {s}")
    if prediction == "eps" and a == 0:
        raise ValueError("eps prediction needs a_t > 0")
    clip = float(clip)
    if math.isnan(clip):
        raise ValueError("clip must not be NaN")
    rows = z.shape[0]
    return (uint_words(seeds, "seeds", 64, z.device, rows), uint_words(samples, "samples", 32, z.device, rows),
            coeffs, clip)


def diffusion_step(z: torch.Tensor, out: torch.Tensor, seeds, samples, step: int, row,
                   prediction: str = "eps", clip: float = 0.0, renormalize: bool = True) -> torch.Tensor:
    """z_{t-1}, float32 (B, ...) like z, from z_t, the model output (any float dtype) and the
    table row (t_model, a_t, s_t, c_x0, c_eps, c_z, sigma); noise (sigma != 0) is the draw
    (seeds[b], samples[b], step, STREAM_STEP). clip <= 0 disables clamping x0."""
    seeds_t, samples_t, (_, a, s, c_x0, c_eps, c_z, sigma), clip = _check_step(
        z, out, seeds, samples, step, row, prediction, clip)
    require_launch(z, out, seeds_t, samples_t)
    z, out = z.contiguous(), out.contiguous()
    res = torch.empty_like(z)
    _step_kernel[(z.shape[0],)](
        z, out, res, seeds_t, samples_t, z[0].numel(), step, STREAM_STEP,
        a, s, c_x0, c_eps, c_z, sigma, clip,
        PREDICTION=PREDICTIONS.index(prediction), FROM_NOISE=False, NOISE=sigma != 0,
        CLIP=clip > 0, S_POSITIVE=s > 0, RENORM=bool(renormalize), BLOCK=BLOCK)
    return res


def initial_noise(seeds, samples, shape, renormalize: bool = True, device=None) -> torch.Tensor:
    """z_T, float32 (B, *shape): row b is the draw (seeds[b], samples[b], 0, STREAM_INIT),
    renormalised; device defaults to the seeds tensor's, else the CPU."""
    device = default_device(seeds, device)
    seeds_t = uint_words(seeds, "seeds", 64, device)
    samples_t = uint_words(samples, "samples", 32, device, rows=len(seeds_t))
    shape = tuple(check_int(d, "a latent dimension", 31) for d in shape)
    numel = math.prod(shape)
    if not shape or not 1 <= numel < 2**31:
        raise ValueError(f"shape must be a latent shape with 1 to 2^31 - 1 elements, got {shape}")
    res = torch.empty(len(seeds_t), *shape, dtype=torch.float32, device=device)
    require_launch(seeds_t, samples_t, res)
    _step_kernel[(len(seeds_t),)](
        res, res, res, seeds_t, samples_t, numel, 0, STREAM_INIT,
        1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,  # a, s, c_x0, c_eps, c_z, sigma, clip: unused
        PREDICTION=0, FROM_NOISE=True, NOISE=False, CLIP=False, S_POSITIVE=False,
        RENORM=bool(renormalize), BLOCK=BLOCK)
    return res


def diffusion_step_reference(z: torch.Tensor, out: torch.Tensor, seeds, samples, step: int, row,
                             prediction: str = "eps", clip: float = 0.0,
                             renormalize: bool = True) -> torch.Tensor:
    """diffusion_step in plain torch, float64 inside, float32 result; runs on any device."""
    seeds_t, samples_t, (_, a, s, c_x0, c_eps, c_z, sigma), clip = _check_step(
        z, out, seeds, samples, step, row, prediction, clip)
    z64, o = z.double(), out.double()

    def eps_from_x0(x0):
        return (z64 - a * x0) / s if s > 0 else torch.zeros_like(z64)

    if prediction == "eps":
        x0, eps = (z64 - s * o) / a, o
    elif prediction == "x":
        x0, eps = o, eps_from_x0(o)
    else:
        x0, eps = a * z64 - s * o, s * z64 + a * o
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
        eps = eps_from_x0(x0)
    new = c_x0 * x0 + c_eps * eps + c_z * z64
    if sigma != 0:
        noise = philox_normal_reference(seeds_t, samples_t, step, STREAM_STEP, z[0].numel())
        new = new + sigma * noise.reshape(z.shape)
    if renormalize:
        new = renormalized(new)
    return new.float()
