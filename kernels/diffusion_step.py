"""One diffusion sampling step as a single Triton kernel, with its Philox noise drawn in-kernel.

For every batch row b (one sample's whole latent), with the step table row
(t_model, a_t, s_t, c_x0, c_eps, c_z, sigma) of ldseg_rt.diffusion:

    (x0, eps) from the model output   eps: x0 = (z - s eps) / a;  x: eps = (z - a x0) / s (0 if s = 0);
                                      v:   x0 = a z - s v, eps = s z + a v
    clip > 0                          x0 = clamp(x0, -clip, clip), eps re-derived from the clamped x0
    z_prev = c_x0 x0 + c_eps eps + c_z z + sigma noise
    renormalize                       z_prev = (z_prev - mean) / (std + 1e-5), population std per row

noise is element e of the Philox4x32-10 draw (seeds[b], samples[b], step, STREAM_STEP):
counter (e // 4, step, sample, stream), key (seed low word, seed high word), lane e % 4 of
the Box-Muller pairs (r0, r1), (r2, r3) in float64; `initial_noise` is the draw (step 0,
STREAM_INIT), renormalised. This is the stream of csrc/philox.h, so a loop of
`initial_noise` + `diffusion_step` follows the C++ sampler (ldseg_rt._C).

Precision: the Philox words are bit-exact. Under the interpreter the normals are bit-identical
to the C++ ones where numpy's float64 log/cos/sin are glibc's (x86-64 without AVX-512, where
numpy has its own SIMD log); compiled for a GPU they come from libdevice, a few ulp from glibc.
The step computes in float64 from float32 z and the model output, with the coefficients
rounded to float32 (Triton passes Python floats as fp32), and returns float32: within 1e-5 of
max|z_prev| of the float64 oracle (measured: under 1e-6), and a K-step loop stays within 1e-5
of the C++ loop, which keeps its state in double.

`diffusion_step_reference` is the plain torch twin (float64 inside, same signature). The
coefficients are Python floats, so a caller that captures a whole K-step loop in one CUDA graph
bakes each step's constants in; seeds and samples should then be device tensors.
"""
from __future__ import annotations

import math
import operator

import torch
import triton
import triton.language as tl

from ._launch import can_launch

PREDICTIONS = ("eps", "x", "v")
STREAM_INIT = 0  # the initial latent z_T (step 0)
STREAM_STEP = 1  # the noise added by loop iteration `step`
RENORM_EPS = 1e-5
_MASK32 = 0xFFFFFFFF
_BLOCK = 1024  # elements per loop iteration of a row; a multiple of 4 (one Philox block = 4 elements)

_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)
_TWO_M32 = tl.constexpr(2.0**-32)
_TWO_PI = tl.constexpr(2.0 * math.pi)  # the double nearest 2 pi, as kTwoPi in csrc/philox.h
_EPS = tl.constexpr(RENORM_EPS)


# ------------------------------------------------------------------ device functions
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


# ------------------------------------------------------------------ kernels
@triton.jit(do_not_specialize=["step", "stream"])
def _normal_kernel(seeds_ptr, samples_ptr, out_ptr, numel, step, stream, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    first = tl.program_id(1) * BLOCK
    k0, k1, sample = _row_key(seeds_ptr, samples_ptr, row)
    noise = _normals(first, k0, k1, sample, step.to(tl.uint32), stream.to(tl.uint32), BLOCK)
    offs = first + tl.arange(0, BLOCK)
    tl.store(out_ptr + row.to(tl.int64) * numel + offs, noise, mask=offs < numel)


@triton.jit
def _philox_words_kernel(counters_ptr, key_ptr, out_ptr, n, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    base = counters_ptr + idx * 4
    c0 = tl.load(base, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(base + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(base + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(base + 3, mask=mask, other=0).to(tl.uint32)
    zero = tl.zeros([BLOCK], tl.uint32)
    k0 = zero + tl.load(key_ptr).to(tl.uint32)
    k1 = zero + tl.load(key_ptr + 1).to(tl.uint32)
    r0, r1, r2, r3 = _philox4x32(c0, c1, c2, c3, k0, k1)
    out = out_ptr + idx * 4
    tl.store(out, r0.to(tl.int64), mask=mask)
    tl.store(out + 1, r1.to(tl.int64), mask=mask)
    tl.store(out + 2, r2.to(tl.int64), mask=mask)
    tl.store(out + 3, r3.to(tl.int64), mask=mask)


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


# ------------------------------------------------------------------ argument checks
def _check_int(value, name: str, bits: int = 32) -> int:
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = operator.index(value)
    if not 0 <= value < 2**bits:
        raise ValueError(f"{name} must be in [0, 2^{bits}), got {value}")
    return value


def _uint_words(values, name: str, bits: int, device, rows: int | None = None) -> torch.Tensor:
    """An int64 tensor (rows,) of unsigned `bits`-bit words, from a tensor (uint64 read through
    its bit pattern; values are not inspected, so this is safe inside CUDA graph capture) or
    from range-checked ints."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.uint64:
            values = values.view(torch.int64)
        if values.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 tensor (the uint{bits} bit pattern) or ints, "
                            f"got dtype {values.dtype}")
        words = values.to(torch.int64).contiguous()
    else:
        if not hasattr(values, "__len__"):
            raise TypeError(f"{name} must be a sequence of ints or an int64 tensor, got {type(values).__name__}")
        # Python ints >= 2^63 become their int64 bit pattern.
        words = torch.tensor([(w + 2**63) % 2**64 - 2**63 for w in (_check_int(v, name, bits) for v in values)],
                             dtype=torch.int64, device=device)
    if words.ndim != 1 or len(words) == 0 or rows is not None and len(words) != rows:
        want = "be a non-empty 1-D sequence" if rows is None else f"have shape ({rows},)"
        raise ValueError(f"{name} must {want}, got shape {tuple(words.shape)}")
    return words


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
    _check_int(step, "step")
    coeffs = tuple(float(c) for c in row)
    if len(coeffs) != 7 or not all(math.isfinite(c) for c in coeffs):
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
    return (_uint_words(seeds, "seeds", 64, z.device, rows), _uint_words(samples, "samples", 32, z.device, rows),
            coeffs, clip)


def _require_launch(*tensors: torch.Tensor) -> None:
    if not can_launch(*tensors):
        devices = ", ".join(sorted({str(t.device) for t in tensors}))
        raise RuntimeError(f"the Triton kernels need all tensors on one CUDA device, or on the CPU under "
                           f"TRITON_INTERPRET=1; got {devices}")


def _default_device(seeds, device):
    if device is not None:
        return torch.device(device)
    return seeds.device if isinstance(seeds, torch.Tensor) else torch.device("cpu")


# ------------------------------------------------------------------ wrappers
def philox4x32(counters: torch.Tensor, key) -> torch.Tensor:
    """Philox4x32-10 of counters (N, 4) (integers in [0, 2^32)) under key (k0, k1), by the
    Triton device function; returns int64 (N, 4) holding the uint32 words, like _C.philox4x32."""
    if not isinstance(counters, torch.Tensor) or counters.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"counters must be an int64 tensor, got {getattr(counters, 'dtype', type(counters))}")
    if counters.ndim != 2 or counters.shape[1] != 4 or len(counters) == 0 or len(counters) >= 2**29:
        raise ValueError(f"counters must have shape (N, 4) with 1 <= N < 2^29, got {tuple(counters.shape)}")
    key_t = _uint_words(key, "key", 32, counters.device, rows=2)
    counters = counters.to(torch.int64).contiguous()
    res = torch.empty_like(counters)
    _require_launch(counters, key_t)
    block = 256
    _philox_words_kernel[(triton.cdiv(len(counters), block),)](counters, key_t, res, len(counters), BLOCK=block)
    return res


def philox_normal(seeds, samples, step: int, stream: int, numel: int, device=None) -> torch.Tensor:
    """Standard normals, float64 (B, numel): row b is the draw (seeds[b], samples[b], step,
    stream) of the C++ stream. seeds: uint64 ints or an int64 tensor of the bit pattern;
    samples: uint32 ints or an int tensor; device defaults to the seeds tensor's, else the CPU."""
    device = _default_device(seeds, device)
    seeds_t = _uint_words(seeds, "seeds", 64, device)
    samples_t = _uint_words(samples, "samples", 32, device, rows=len(seeds_t))
    step, stream = _check_int(step, "step"), _check_int(stream, "stream")
    numel = _check_int(numel, "numel", 31)
    res = torch.empty(len(seeds_t), numel, dtype=torch.float64, device=device)
    _require_launch(seeds_t, samples_t, res)
    if numel:
        grid = (len(seeds_t), triton.cdiv(numel, _BLOCK))
        _normal_kernel[grid](seeds_t, samples_t, res, numel, step, stream, BLOCK=_BLOCK)
    return res


def diffusion_step(z: torch.Tensor, out: torch.Tensor, seeds, samples, step: int, row,
                   prediction: str = "eps", clip: float = 0.0, renormalize: bool = True) -> torch.Tensor:
    """z_{t-1}, float32 (B, ...) like z, from z_t, the model output (any float dtype) and the
    table row (t_model, a_t, s_t, c_x0, c_eps, c_z, sigma); noise (sigma != 0) is the draw
    (seeds[b], samples[b], step, STREAM_STEP). clip <= 0 disables clamping x0."""
    seeds_t, samples_t, (_, a, s, c_x0, c_eps, c_z, sigma), clip = _check_step(
        z, out, seeds, samples, step, row, prediction, clip)
    _require_launch(z, out, seeds_t, samples_t)
    z, out = z.contiguous(), out.contiguous()
    res = torch.empty_like(z)
    _step_kernel[(z.shape[0],)](
        z, out, res, seeds_t, samples_t, z[0].numel(), step, STREAM_STEP,
        a, s, c_x0, c_eps, c_z, sigma, clip,
        PREDICTION=PREDICTIONS.index(prediction), FROM_NOISE=False, NOISE=sigma != 0,
        CLIP=clip > 0, S_POSITIVE=s > 0, RENORM=bool(renormalize), BLOCK=_BLOCK)
    return res


def initial_noise(seeds, samples, shape, renormalize: bool = True, device=None) -> torch.Tensor:
    """z_T, float32 (B, *shape): row b is the draw (seeds[b], samples[b], 0, STREAM_INIT),
    renormalised; device defaults to the seeds tensor's, else the CPU."""
    device = _default_device(seeds, device)
    seeds_t = _uint_words(seeds, "seeds", 64, device)
    samples_t = _uint_words(samples, "samples", 32, device, rows=len(seeds_t))
    shape = tuple(_check_int(d, "a latent dimension", 31) for d in shape)
    numel = math.prod(shape)
    if not shape or not 1 <= numel < 2**31:
        raise ValueError(f"shape must be a latent shape with 1 to 2^31 - 1 elements, got {shape}")
    res = torch.empty(len(seeds_t), *shape, dtype=torch.float32, device=device)
    _require_launch(seeds_t, samples_t, res)
    _step_kernel[(len(seeds_t),)](
        res, res, res, seeds_t, samples_t, numel, 0, STREAM_INIT,
        1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,  # a, s, c_x0, c_eps, c_z, sigma, clip: unused
        PREDICTION=0, FROM_NOISE=True, NOISE=False, CLIP=False, S_POSITIVE=False,
        RENORM=bool(renormalize), BLOCK=_BLOCK)
    return res


# ------------------------------------------------------------------ plain torch reference
def _mulhilo_torch(m: int, x: torch.Tensor):
    """(high, low) words of m * x for m, x < 2^32, exactly in int64 via 16-bit halves of x."""
    a = m * (x & 0xFFFF)  # < 2^48
    b = m * (x >> 16)  # < 2^48
    return ((a >> 16) + b) >> 16, (a + ((b & 0xFFFF) << 16)) & _MASK32


def _philox_torch(c0, c1, c2, c3, k0, k1):
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo_torch(0xD2511F53, c0)
        hi1, lo1 = _mulhilo_torch(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _normal_torch(seeds: torch.Tensor, samples: torch.Tensor, step: int, stream: int, numel: int):
    """The same draws as philox_normal, in plain torch; float64 (B, numel)."""
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


def _renormalize_torch(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=0)
    return ((flat - mean) / (std + RENORM_EPS)).reshape(x.shape)


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
        noise = _normal_torch(seeds_t, samples_t, step, STREAM_STEP, z[0].numel())
        new = new + sigma * noise.reshape(z.shape)
    if renormalize:
        new = _renormalize_torch(new)
    return new.float()
