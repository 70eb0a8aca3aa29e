"""The Triton diffusion step (ldseg_rt.kernels.diffusion_step) against the C++ Philox noise and
sampling loop (ldseg_rt._C) and the float64 oracle (ldseg_rt.diffusion). Without a GPU the
kernels run under TRITON_INTERPRET=1 (set by conftest), where the normals are bit-identical."""
import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from ldseg_rt import _C, diffusion
from ldseg_rt.diffusion import philox, sampler
from ldseg_rt.diffusion.constants import STREAM_INIT, STREAM_STEP
from ldseg_rt.kernels import diffusion_step as ds
from ldseg_rt.kernels import philox as kphilox
from ldseg_rt.kernels._launch import interpreting, require_launch, uint_words

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5  # of max |reference|, the float32 budget

# Step table rows that between them cover the branches of the update.
DDPM_T = np.linspace(999, 0, 10)
ROWS = {
    "first, tiny a_t, noisy": diffusion.ldseg_table(15, eta=1.0)[0],
    "ddpm, c_z != 0, noisy": diffusion.ddpm_table(DDPM_T, diffusion.cosine_alpha_bar(DDPM_T))[4],
    "middle, noiseless": diffusion.ldseg_table(15, eta=0.0)[7],
    # Like a table's last step (a_t = 1, s_t = 0: eps is taken as 0), with weights on eps and z.
    "s_t = 0, c_eps != 0": np.array([0.0, 1.0, 0.0, 0.9, 0.4, 0.1, 0.0]),
}


# The Philox device function alone, launched here to compare its raw words with the C++ ones.
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
    r0, r1, r2, r3 = kphilox._philox4x32(c0, c1, c2, c3, k0, k1)
    out = out_ptr + idx * 4
    tl.store(out, r0.to(tl.int64), mask=mask)
    tl.store(out + 1, r1.to(tl.int64), mask=mask)
    tl.store(out + 2, r2.to(tl.int64), mask=mask)
    tl.store(out + 3, r3.to(tl.int64), mask=mask)


def philox4x32(counters: torch.Tensor, key) -> torch.Tensor:
    """Philox4x32-10 of int64 counters (N, 4) under key (k0, k1), by the step kernel's Triton
    device function; returns int64 (N, 4) holding the uint32 words, like _C.philox4x32."""
    key_t = uint_words(key, "key", 32, counters.device, rows=2)
    counters = counters.to(torch.int64).contiguous()
    res = torch.empty_like(counters)
    require_launch(counters, key_t)
    block = 256
    _philox_words_kernel[(triton.cdiv(len(counters), block),)](counters, key_t, res, len(counters), BLOCK=block)
    return res


def random_seeds(rng, k):
    """k >= 3 uint64 seeds as Python ints: one >= 2^63, one in [2^32, 2^63), one < 2^32."""
    seeds = [int(s) for s in rng.integers(0, 2**64, size=k, dtype=np.uint64)]
    seeds[:3] = [int(rng.integers(2**63, 2**64, dtype=np.uint64)), int(rng.integers(2**32, 2**63)),
                 int(rng.integers(0, 2**32))]
    return seeds


def as_bit_pattern(seeds):
    return torch.from_numpy(np.array(seeds, dtype=np.uint64).view(np.int64)).to(DEVICE)


def cpp_normals(seeds, samples, step, stream, numel):
    return np.stack([_C.normal(s, k, step, stream, numel) for s, k in zip(seeds, samples)])


def numpy_math_is_glibc():
    """Whether numpy's float64 log/cos/sin, which the interpreter runs, are glibc's (which
    Python's math module and the C++ code call); numpy has SIMD versions on some CPUs."""
    x = np.random.default_rng(0).random(4096) + 2.0**-33
    return all(np.array_equal(f(x), [g(v) for v in x])
               for f, g in ((np.log, math.log), (np.cos, math.cos), (np.sin, math.sin)))


def rel_err(got, ref):
    return np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max()


# ------------------------------------------------------------------ (a) Philox words
def test_philox_words_bit_identical(rng):
    counters = rng.integers(0, 2**32, size=(1000, 4), dtype=np.uint64)
    counters[:2] = [[0, 0, 0, 0], [2**32 - 1] * 4]
    seed = random_seeds(rng, 3)[0]
    keys = [(0, 0), (2**32 - 1, 2**32 - 1), (seed & 0xFFFFFFFF, seed >> 32),
            tuple(int(k) for k in rng.integers(0, 2**32, size=2))]
    for key in keys:
        got = philox4x32(torch.from_numpy(counters.astype(np.int64)).to(DEVICE), key).cpu().numpy()
        assert np.array_equal(got, _C.philox4x32(counters.astype(np.uint32), key)), key
        assert np.array_equal(got, philox.philox4x32(counters.astype(np.uint32), key)), key


# ------------------------------------------------------------------ (b) normals
@pytest.mark.parametrize("numel", [1, 5, 1023, 2053])
@pytest.mark.parametrize("stream", [STREAM_INIT, STREAM_STEP])
def test_normals_match_cpp(rng, numel, stream):
    seeds = random_seeds(rng, 4)
    samples = [0, 2**32 - 1] + [int(k) for k in rng.integers(0, 2**32, size=2)]
    step = int(rng.choice([0, 2**32 - 1, rng.integers(0, 2**32)]))
    ref = cpp_normals(seeds, samples, step, stream, numel)
    got = kphilox.philox_normal(seeds, samples, step, stream, numel, device=DEVICE).cpu().numpy()
    assert got.dtype == np.float64 and got.shape == (4, numel)
    if interpreting() and numpy_math_is_glibc():
        # The interpreter's numpy and the C++ code call the same glibc log/cos/sin.
        assert np.array_equal(got, ref)
    else:
        # libdevice's (GPU) or numpy's SIMD log/cos/sin are within a few ulp of glibc's.
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    # The same draws from the int64 bit pattern of the seeds and tensor samples.
    again = kphilox.philox_normal(as_bit_pattern(seeds), torch.tensor(samples, device=DEVICE), step, stream, numel)
    assert torch.equal(again.cpu(), torch.from_numpy(got))
    # The torch reference's port of the stream (torch's own libm: within an ulp or so).
    torch_ref = kphilox.philox_normal_reference(as_bit_pattern(seeds), torch.tensor(samples, device=DEVICE), step, stream, numel)
    np.testing.assert_allclose(torch_ref.cpu().numpy(), ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("renormalize", [False, True])
def test_initial_noise_is_the_init_draw(rng, renormalize):
    seeds, samples, shape = random_seeds(rng, 3), [0, 1, 7], (3, 5, 7)
    got = ds.initial_noise(as_bit_pattern(seeds), torch.tensor(samples, device=DEVICE), shape, renormalize)
    assert got.dtype == torch.float32 and got.shape == (3, *shape) and got.device.type == DEVICE
    ref = cpp_normals(seeds, samples, 0, STREAM_INIT, 105).reshape(3, *shape)
    if renormalize:
        ref = diffusion.renormalize(ref)
    assert rel_err(got.cpu().numpy(), ref) <= TOL


# ------------------------------------------------------------------ (c) one step
def check_step(rng, shape, prediction, row, clip, renormalize, out_dtype=torch.float32):
    batch = shape[0]
    seeds = random_seeds(rng, max(batch, 3))[:batch]
    samples = [int(k) for k in rng.integers(0, 2**32, size=batch)]
    step = int(rng.integers(0, 2**32))
    z = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(DEVICE)
    out = torch.from_numpy(rng.standard_normal(shape)).to(DEVICE, out_dtype)
    args = (z, out, as_bit_pattern(seeds), torch.tensor(samples, device=DEVICE), step, row.tolist(),
            prediction, clip, renormalize)
    got = ds.diffusion_step(*args)
    assert got.dtype == torch.float32 and got.shape == z.shape
    noise = cpp_normals(seeds, samples, step, STREAM_STEP, z[0].numel()).reshape(shape) if row[6] else None
    ref = diffusion.reference_step(z.double().cpu().numpy(), out.double().cpu().numpy(), row, prediction, clip, noise)
    if renormalize:
        ref = diffusion.renormalize(ref)
    label = f"{prediction} clip={clip} renormalize={renormalize} row={row}"
    assert rel_err(got.cpu().numpy(), ref) <= TOL, label
    assert rel_err(ds.diffusion_step_reference(*args).cpu().numpy(), ref) <= TOL, label


@pytest.mark.parametrize("shape", [(3, 1, 5, 7), (3, 1, 16, 16), (3, 3, 17, 9), (3, 1, 8, 8, 16), (2, 1, 3, 5, 7)])
@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_step_matches_oracle(rng, shape, prediction):
    for row in ROWS.values():
        for clip in (0.0, 1.0):
            for renormalize in (False, True):
                check_step(rng, shape, prediction, row, clip, renormalize)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_step_matches_oracle_on_a_large_latent(rng, prediction):
    # 16384 elements: each loop over a row takes 16 blocks.
    for i, row in enumerate(ROWS.values()):
        check_step(rng, (2, 4, 64, 64), prediction, row, clip=1.0 if i % 2 else 0.0, renormalize=i != 2)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_step_reads_any_float_model_output(rng, out_dtype):
    check_step(rng, (3, 2, 9, 11), "v", ROWS["ddpm, c_z != 0, noisy"], 1.0, True, out_dtype)


# ------------------------------------------------------------------ (d) the whole loop
def denoise(z, t):
    """An analytic stand-in for the model: float32 in, float32 out, as the C++ loop calls it."""
    return (0.3 * z + 0.1 * np.sin(t / 250.0)[:, None, None, None]).astype(np.float32)


@pytest.mark.parametrize("eta,prediction,clip", [(0.0, "eps", 0.0), (1.0, "eps", 0.0), (1.0, "v", 1.5),
                                                 (1.0, "x", 0.0)])
def test_loop_matches_cpp_sampler(rng, eta, prediction, clip):
    table = diffusion.ldseg_table(15, eta=eta)
    seeds, n, latent = random_seeds(rng, 3)[:2], 2, (4, 16, 16)
    ref = sampler.sample_latents(denoise, np.array(seeds, np.uint64), n, latent, table, prediction, clip)
    # Batch rows are image-major: row b is sample b % n of image b // n.
    row_seeds = as_bit_pattern([s for s in seeds for _ in range(n)])
    row_samples = torch.arange(n, device=DEVICE).repeat(len(seeds))
    z = ds.initial_noise(row_seeds, row_samples, latent)
    for i, row in enumerate(table):
        t = np.full(len(z), row[0], np.float32)
        out = torch.from_numpy(denoise(z.cpu().numpy(), t)).to(DEVICE)
        z = ds.diffusion_step(z, out, row_seeds, row_samples, i, row.tolist(), prediction, clip)
    assert rel_err(z.cpu().numpy(), ref.astype(np.float64)) <= TOL


# ------------------------------------------------------------------ (e) errors
def step_args(**changes):
    z = torch.zeros(2, 3, 4, device=DEVICE)
    args = dict(z=z, out=torch.zeros_like(z), seeds=[1, 2**64 - 1], samples=[0, 1], step=3,
                row=ROWS["middle, noiseless"].tolist(), prediction="eps")
    args.update(changes)
    return args


@pytest.mark.parametrize("fn", [ds.diffusion_step, ds.diffusion_step_reference])
@pytest.mark.parametrize("changes,error,match", [
    (dict(out=torch.zeros(2, 3, 5)), ValueError, "shape"),
    (dict(z=torch.zeros(2, 3, 4, dtype=torch.float64)), TypeError, "z must be float32"),
    (dict(out=torch.zeros(2, 3, 4, dtype=torch.int32)), TypeError, "float tensor"),
    (dict(prediction="sample"), ValueError, "unknown prediction type 'sample'"),
    (dict(seeds=torch.zeros(2)), TypeError, "seeds must be an int64 tensor"),
    (dict(seeds=[1, 2, 3]), ValueError, r"seeds must have shape \(2,\)"),
    (dict(seeds=[-1, 2]), ValueError, r"seeds must be in \[0, 2\^64\)"),
    (dict(samples=[0, 2**32]), ValueError, r"samples must be in \[0, 2\^32\)"),
    (dict(step=-1), ValueError, "step"),
    (dict(row=[0.0] * 6), ValueError, "row must be 7 finite floats"),
    (dict(row=[999.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]), ValueError, "eps prediction needs a_t > 0"),
])
def test_bad_arguments_are_named(fn, changes, error, match):
    args = step_args(**changes)
    for key in ("z", "out"):
        args[key] = args[key].to(DEVICE)
    with pytest.raises(error, match=match):
        fn(**args)


def test_unlaunchable_tensors_raise(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU tensors need the interpreter
    with pytest.raises(RuntimeError, match="CUDA device"):
        ds.diffusion_step(**step_args(z=torch.zeros(2, 3), out=torch.zeros(2, 3)))
    with pytest.raises(RuntimeError, match="CUDA device"):
        kphilox.philox_normal([1], [0], 0, 0, 4, device="cpu")
    # The reference runs anywhere.
    assert ds.diffusion_step_reference(**step_args(z=torch.zeros(2, 3), out=torch.zeros(2, 3))).shape == (2, 3)


def test_philox_wrappers_reject_bad_input():
    with pytest.raises(ValueError, match="samples"):
        kphilox.philox_normal([1, 2], [0], 0, 0, 4, device=DEVICE)
    with pytest.raises(ValueError, match="shape"):
        ds.initial_noise([1], [0], (4, 0, 3), device=DEVICE)
