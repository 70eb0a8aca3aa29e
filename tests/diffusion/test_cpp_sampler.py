"""The C++ sampling loop (ldseg_rt._C.sample) against a plain float64 numpy loop.

The reference below is written from the formulas alone, with ldseg_rt.philox for
the noise; it hands the denoiser the same float32 batch and reads its output as
float32, so the two loops differ only by rounding in double.
"""
import math
import zlib

import numpy as np
import pytest

from ldseg_rt import _C
from ldseg_rt.diffusion import philox
from ldseg_rt.diffusion.constants import STREAM_INIT, STREAM_STEP

PREDICTIONS = ("eps", "x", "v")


def reference_sample(denoise, seeds, n, shape, table, prediction, clip, renormalize):
    numel = math.prod(shape)
    rows = [(int(seeds[b // n]), b % n) for b in range(len(seeds) * n)]

    def noise(step, stream):
        return np.stack([philox.normal(seed, k, step, stream, numel) for seed, k in rows])

    def renorm(z):
        if not renormalize:
            return z
        return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, keepdims=True) + 1e-5)

    z = renorm(noise(0, STREAM_INIT))
    for i, (t_model, a, s, c_x0, c_eps, c_z, sigma) in enumerate(table):
        z32 = z.astype(np.float32).reshape(len(rows), *shape)
        t = np.full(len(rows), t_model, dtype=np.float32)
        out = np.asarray(denoise(z32, t), dtype=np.float32).reshape(len(rows), numel).astype(np.float64)
        if prediction == "eps":
            eps = out
            x0 = (z - s * eps) / a
        elif prediction == "x":
            x0 = out
            eps = (z - a * x0) / s if s > 0 else np.zeros_like(z)
        else:
            x0 = a * z - s * out
            eps = s * z + a * out
        if clip > 0:
            x0 = np.clip(x0, -clip, clip)
            eps = (z - a * x0) / s if s > 0 else np.zeros_like(z)
        z_next = c_x0 * x0 + c_eps * eps + c_z * z
        if sigma != 0:
            z_next = z_next + sigma * noise(i, STREAM_STEP)
        z = renorm(z_next)
    return z.reshape(len(rows), *shape)


def random_table(rng, steps, with_zero_s=False):
    """High noise first: a_t rising in (0.3, 1), s_t = sqrt(1 - a_t^2); every other sigma is 0."""
    a = np.sort(rng.uniform(0.3, 0.999, steps))
    s = np.sqrt(1 - a**2)
    if with_zero_s:
        a[-1], s[-1] = 1.0, 0.0
    table = np.empty((steps, 7))
    table[:, 0] = np.linspace(999, 0, steps)
    table[:, 1], table[:, 2] = a, s
    table[:, 3] = rng.uniform(0.2, 1.0, steps)  # c_x0
    table[:, 4] = rng.uniform(-0.5, 0.5, steps)  # c_eps
    table[:, 5] = rng.uniform(0.0, 0.5, steps)  # c_z
    table[:, 6] = np.where(np.arange(steps) % 2 == 1, rng.uniform(0.05, 0.5, steps), 0.0)
    return table


def per_row(t, z):
    """t (B,) broadcast over the rest of a latent of any rank."""
    return t.reshape(-1, *[1] * (z.ndim - 1))


def tanh_denoiser(z, t):
    return np.tanh(0.7 * z + 0.1 * per_row(t, z) / 1000)


def mixing_denoiser(z, t):
    """Mixes each row across channels, rows and columns, and depends on the position,
    so a layout bug shows. Only +, -, * in float32: deterministic per element."""
    position = np.arange(z[0].size, dtype=np.float32).reshape(z.shape[1:]) / np.float32(z[0].size)
    return (
        np.float32(0.5) * z
        + np.float32(0.25) * np.roll(z, 1, axis=2)
        - np.float32(0.25) * np.flip(z, axis=3)
        + np.float32(0.125) * np.roll(z, 1, axis=1)
        + np.float32(0.1) * position
        + np.float32(1e-4) * per_row(t, z)
    )


DENOISERS = {"tanh": tanh_denoiser, "mixing": mixing_denoiser}


def run(denoise, seeds, n, shape, table, prediction="eps", clip=0.0, renormalize=False, threads=1):
    return _C.sample(
        denoise=denoise,
        seeds=np.asarray(seeds, dtype=np.uint64),
        n=n,
        latent_shape=shape,
        table=table,
        prediction=prediction,
        clip=clip,
        renormalize=renormalize,
        threads=threads,
    )


def assert_close(got, ref):
    assert got.dtype == np.float32 and got.shape == ref.shape
    err = np.max(np.abs(got.astype(np.float64) - ref)) / max(1.0, np.max(np.abs(ref)))
    assert err <= 1e-5, err


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [0.0, 1.5])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize(
    "shape,seeds,n",
    [((1, 1, 1), [3], 1), ((1, 5, 3), [1, 2], 3), ((2, 7, 9), [11, 2**63 + 5, 0], 2), ((1, 32, 32), [7], 4),
     ((1, 8, 8, 16), [7], 3), ((1, 3, 5, 2), [1, 2], 2)],  # volumes' latents (C, D, H, W)
)
def test_matches_numpy_reference(denoiser, prediction, clip, renormalize, shape, seeds, n):
    rng = np.random.default_rng(zlib.crc32(repr((denoiser, prediction, clip, renormalize, shape)).encode()))
    table = random_table(rng, steps=6, with_zero_s=prediction == "x")
    args = (DENOISERS[denoiser], np.array(seeds, dtype=np.uint64), n, shape, table, prediction, clip, renormalize)
    assert_close(run(*args, threads=2), reference_sample(*args))


def test_single_step_without_sigma_matches_reference():
    table = np.array([[500.0, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0]])
    args = (tanh_denoiser, np.array([5], dtype=np.uint64), 2, (1, 5, 3), table, "eps", 0.0, False)
    assert_close(run(*args), reference_sample(*args))


def test_initial_latent_is_stream_zero():
    # c_z = 1 and nothing else: the result is z_T itself.
    table = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    out = run(tanh_denoiser, [9, 10], 2, (2, 3, 5), table)
    for b, (seed, k) in enumerate([(9, 0), (9, 1), (10, 0), (10, 1)]):
        expected = philox.normal(seed, k, 0, STREAM_INIT, 30).astype(np.float32)
        assert np.array_equal(out[b].reshape(-1), expected)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("renormalize", [False, True])
def test_sample_does_not_depend_on_batch(prediction, renormalize):
    shape, seed = (2, 7, 9), 2024
    table = random_table(np.random.default_rng(1), steps=5)
    args = dict(table=table, prediction=prediction, clip=2.0, renormalize=renormalize)
    alone = run(mixing_denoiser, [seed], 1, shape, **args)
    sixteen = run(mixing_denoiser, [seed], 16, shape, **args)
    mixed = run(mixing_denoiser, [99, seed, 2**40], 16, shape, threads=2, **args)
    four = run(mixing_denoiser, [seed, 5], 4, shape, **args)
    assert np.array_equal(alone[0], sixteen[0])
    assert np.array_equal(sixteen, mixed[16:32])
    assert np.array_equal(sixteen[:4], four[:4])
    assert not np.array_equal(sixteen[0], sixteen[1])


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_thread_count_does_not_change_the_result(denoiser):
    table = random_table(np.random.default_rng(2), steps=5)
    args = (DENOISERS[denoiser], [1, 2, 3], 3, (2, 7, 9), table, "v", 1.0, True)
    one = run(*args, threads=1)
    for threads in (2, 0, 64):
        assert np.array_equal(run(*args, threads=threads), one)


def test_denoiser_called_once_per_step_with_whole_batch():
    calls = []
    table = random_table(np.random.default_rng(3), steps=7)

    def denoise(z, t):
        calls.append((z.copy(), t.copy()))
        assert z.dtype == np.float32 and z.flags.c_contiguous and z.shape == (6, 2, 3, 4)
        assert t.dtype == np.float32 and t.shape == (6,)
        return tanh_denoiser(z, t)

    run(denoise, [4, 5], 3, (2, 3, 4), table)
    assert len(calls) == 7
    for (_, t), t_model in zip(calls, table[:, 0]):
        assert np.all(t == np.float32(t_model))


def test_arrays_kept_by_the_denoiser_stay_valid():
    kept = []

    def denoise(z, t):
        kept.append((z, z.copy()))
        return z * 0.5

    table = random_table(np.random.default_rng(4), steps=4)
    run(denoise, [1], 2, (1, 4, 4), table, renormalize=True)
    for view, snapshot in kept:
        assert np.array_equal(view, snapshot)


def test_convertible_outputs_are_accepted():
    table = random_table(np.random.default_rng(5), steps=3)
    args = ([1, 2], 2, (2, 3, 4), table, "x", 0.0, False)
    expected = run(tanh_denoiser, *args)

    def float64_transposed(z, t):
        out = tanh_denoiser(z, t).astype(np.float64)
        return np.ascontiguousarray(out.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)  # not C-contiguous

    assert np.array_equal(run(float64_transposed, *args), expected)


# ---- bad arguments -------------------------------------------------------------

GOOD = dict(
    denoise=tanh_denoiser,
    seeds=np.array([1], dtype=np.uint64),
    n=1,
    latent_shape=(1, 2, 2),
    table=np.array([[999.0, 0.5, math.sqrt(0.75), 1.0, 0.0, 0.0, 0.0]]),
    prediction="eps",
    clip=0.0,
    renormalize=False,
    threads=1,
)


def test_good_arguments_work():
    assert _C.sample(**GOOD).shape == (1, 1, 2, 2)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(seeds=np.array([], dtype=np.uint64)), "seeds"),
        (dict(seeds=np.array([[1]], dtype=np.uint64)), "seeds"),
        (dict(seeds=np.array([1.5])), "seeds"),
        (dict(seeds=np.array([-1])), "non-negative"),
        (dict(seeds=[3, -1]), "non-negative"),
        (dict(n=0), "n must be"),
        (dict(latent_shape=(1, 0, 2)), "latent_shape"),
        (dict(latent_shape=(1, -2, 2)), "latent_shape"),
        (dict(latent_shape=()), "latent_shape"),
        (dict(latent_shape=(2**20, 2**20, 2**20)), "2\\^34"),
        (dict(table=np.zeros((0, 7))), "table"),
        (dict(table=np.zeros((3, 6))), "table"),
        (dict(table=np.zeros(7)), "table"),
        (dict(table=np.array([[999.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])), "a_t > 0"),
        (dict(table=np.array([[999.0, np.nan, 1.0, 1.0, 0.0, 0.0, 0.0]])), "finite"),
        (dict(table=np.array([[999.0, 0.5, -0.5, 1.0, 0.0, 0.0, 0.0]])), ">= 0"),
        (dict(prediction="sample"), "prediction"),
        (dict(clip=float("nan")), "clip"),
        (dict(threads=-1), "threads"),
    ],
)
def test_bad_arguments_raise_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        _C.sample(**{**GOOD, **change})


def test_seeds_may_be_a_list_of_ints():
    as_list = _C.sample(**{**GOOD, "seeds": [1, 2**62]})
    as_array = _C.sample(**{**GOOD, "seeds": np.array([1, 2**62], dtype=np.uint64)})
    assert np.array_equal(as_list, as_array)
    # numpy reads [1, 2**64 - 1] as float64; refusing it beats silently rounding a seed.
    with pytest.raises(ValueError, match="float64"):
        _C.sample(**{**GOOD, "seeds": [1, 2**64 - 1]})


def test_a_t_zero_is_fine_without_eps_prediction():
    table = np.array([[999.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    for prediction in ("x", "v"):
        assert np.all(np.isfinite(_C.sample(**{**GOOD, "table": table, "prediction": prediction})))


@pytest.mark.parametrize(
    "returned,message",
    [
        (lambda z: z[:, 0], r"shape \(1, 2, 2\) .*expected .*shape \(1, 1, 2, 2\)"),
        (lambda z: z.reshape(1, 4), r"shape \(1, 4\)"),
        (lambda z: None, "NoneType"),
        (lambda z: z.astype(np.complex64), "complex64"),
        (lambda z: "noise", "str|<U5"),
    ],
)
def test_bad_denoiser_output_raises_value_error(returned, message):
    with pytest.raises(ValueError, match=message):
        _C.sample(**{**GOOD, "denoise": lambda z, t: returned(z)})


def test_non_finite_output_names_the_step():
    table = np.repeat(GOOD["table"], 4, axis=0)
    calls = []

    def denoise(z, t):
        calls.append(1)
        return np.full(z.shape, np.nan if len(calls) == 3 else 0.1, dtype=np.float32)

    with pytest.raises(ValueError, match="step 2"):
        _C.sample(**{**GOOD, "denoise": denoise, "table": table})
    assert len(calls) == 3


def test_denoiser_exception_propagates_unchanged():
    class ModelError(Exception):
        pass

    error = ModelError("out of memory")

    def denoise(z, t):
        raise error

    with pytest.raises(ModelError) as excinfo:
        _C.sample(**{**GOOD, "denoise": denoise})
    assert excinfo.value is error
