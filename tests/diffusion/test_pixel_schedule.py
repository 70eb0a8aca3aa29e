"""ldseg_rt.diffusion.pixel_schedule: the pixel-space family's VP process and step tables,
against closed forms written out here independently, and run by the C++ sampler."""
import math

import numpy as np
import pytest
import torch

from conftest import ref_gamma_b
from ldseg_rt import diffusion as D
from ldseg_rt.diffusion import pixel_schedule as P
from ldseg_rt.diffusion.sampler import sample_latents
from ldseg_rt.errors import InvalidArgumentError


# ---------------------------------------------------------------- independent float64 closed forms
def ref_posterior(t, s, b, clamp):
    """q(x_s | x_t, x0) in the VDM log-SNR form: mean = r alpha_s/alpha_t x_t + (1 - r) alpha_s x0,
    r = SNR(t) / SNR(s); variance (1 - r) sigma_t^2 ('large') or (1 - r) sigma_s^2 ('small')."""
    _, lt = ref_gamma_b(t, b, clamp)
    _, ls = ref_gamma_b(s, b, clamp)
    at, ats = math.sqrt(1 / (1 + math.exp(-lt))), math.sqrt(1 / (1 + math.exp(lt)))
    as_, ass = math.sqrt(1 / (1 + math.exp(-ls))), math.sqrt(1 / (1 + math.exp(ls)))
    r = math.exp(lt - ls)
    return dict(a_t=at, s_t=ats, a_s=as_, s_s=ass, c_z=r * as_ / at, c_x0=(1 - r) * as_,
                large=(1 - r) * ats ** 2, small=(1 - r) * ass ** 2)


def two_point_denoiser(p, b, clamp, prediction="x"):
    """The exact E[x0 | x_t] for x0 = +1 everywhere (probability p) or -1 everywhere: the
    likelihood ratio of the two is exp(2 alpha sum(x_t) / sigma^2), so
    E[x0 | x_t] = tanh(alpha sum(x_t) / sigma^2 + logit(p) / 2)."""
    half_logit = 0.5 * math.log(p / (1 - p))

    def denoise(z, t):
        a, s = P.alpha_sigma(t.astype(np.float64), b, clamp)
        stat = a * z.reshape(len(z), -1).astype(np.float64).sum(1) / s ** 2
        x0 = np.broadcast_to(np.tanh(stat + half_logit)[:, None, None, None], z.shape)
        if prediction == "x":
            return x0.astype(np.float32)
        a, s = a[:, None, None, None], s[:, None, None, None]
        eps = (z - a * x0) / s
        return (eps if prediction == "eps" else a * eps - s * x0).astype(np.float32)
    return denoise


def mixing_denoiser(z, t):
    """Analytic, mixes neighbours (a layout bug would show), depends on t."""
    return (np.tanh(0.7 * z + 0.4 * np.roll(z, 1, axis=-1)) * (1 - 0.3 * t[:, None, None, None])).astype(np.float32)


# ---------------------------------------------------------------- schedule
@pytest.mark.parametrize("b", [0.1, 0.5, 1.0, 2.0])
def test_snr_identity_away_from_clamp(rng, b):
    t = rng.uniform(0.02, 0.98, 200)
    g = np.cos(np.pi * t / 2) ** 2
    snr = g / (1 - g)
    lam = P.logsnr(t, b, 20.0)
    inside = np.abs(lam) < 20
    assert inside.all()
    np.testing.assert_allclose(np.exp(lam), b * b * snr, rtol=1e-10)
    gb = P.scaled_gamma(t, b)
    np.testing.assert_allclose(gb, b * b * g / ((b * b - 1) * g + 1), rtol=1e-10)
    np.testing.assert_allclose(gb, ref_gamma_b(t, b, 20.0)[0], rtol=1e-10)
    a, s = P.alpha_sigma(t, b)
    np.testing.assert_allclose(a * a + s * s, 1.0, rtol=1e-14)
    np.testing.assert_allclose(a, np.sqrt(gb), rtol=1e-12)


@pytest.mark.parametrize("clamp", [5.0, 20.0])
@pytest.mark.parametrize("ends", ["clamp", "affine"])
def test_logsnr_clamped_at_the_ends(clamp, ends):
    lam = P.logsnr(np.array([0.0, 1.0]), 0.1, clamp, ends)
    np.testing.assert_allclose(lam, [clamp, -clamp], rtol=1e-9)
    t = np.linspace(0, 1, 2001)
    lam = P.logsnr(t, 0.1, clamp, ends)
    assert np.all(np.abs(lam) <= clamp * (1 + 1e-12)) and np.isfinite(lam).all()
    if ends == "clamp":
        raw = np.log(ref_gamma_b(t[1:-1], 0.1, np.inf)[0]) - np.log1p(-ref_gamma_b(t[1:-1], 0.1, np.inf)[0])
        np.testing.assert_allclose(lam[1:-1], np.clip(raw, -clamp, clamp), atol=1e-9)
    a, s = P.alpha_sigma(np.array([0.0, 1.0]), 0.1, clamp, ends)
    assert a[1] > 0 and s[0] > 0


@pytest.mark.parametrize("b", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("ends", ["clamp", "affine"])
def test_scaled_gamma_in_unit_interval_and_decreasing(b, ends):
    t = np.linspace(0, 1, 4001)
    g = P.scaled_gamma(t, b, 20.0, ends)
    assert np.all(g > 0) and np.all(g < 1)
    assert np.all(np.diff(g) <= 0)
    lam = P.logsnr(t, b, 20.0, ends)
    free = np.abs(lam) < 19.9  # strictly decreasing wherever the clamp is not active
    assert np.all(np.diff(g)[free[1:] & free[:-1]] < 0)


def test_affine_ends_close_to_clamp_on_the_grid():
    """The original's affine end map moves g by ~2e-9: on a 10-step grid the clamp agrees."""
    t = P.pixel_timesteps(10)
    g_c, g_a = P.scaled_gamma(t, 0.1, 20.0, "clamp"), P.scaled_gamma(t, 0.1, 20.0, "affine")
    np.testing.assert_allclose(g_a, g_c, rtol=1e-4)
    assert g_a[0] == pytest.approx(1 / (1 + math.exp(20)), rel=1e-9)


def test_torch_schedule_matches_numpy(rng):
    t = rng.uniform(0, 1, 64)
    for ends in ("clamp", "affine"):
        got = P.logsnr(torch.from_numpy(t).float(), 0.1, 20.0, ends)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), P.logsnr(t.astype(np.float32), 0.1, 20.0, ends), rtol=1e-12, atol=1e-12)


def test_bad_arguments_rejected():
    with pytest.raises(InvalidArgumentError, match="t must lie"):
        P.logsnr(np.array([0.5, 1.5]))
    with pytest.raises(InvalidArgumentError, match="input scale"):
        P.logsnr(0.5, b=0.0)
    with pytest.raises(InvalidArgumentError, match="ends"):
        P.logsnr(0.5, ends="wrap")
    with pytest.raises(InvalidArgumentError, match="steps"):
        P.pixel_ddpm_table(0)
    with pytest.raises(ValueError, match="variance"):
        P.pixel_ddpm_table(5, variance="medium")
    with pytest.raises(InvalidArgumentError, match="DDIM"):
        P.pixel_table(P.PixelProcess(sampler="ddpm"), eta=0.5)

@pytest.mark.parametrize("steps", [1, 2, 10, 37])
@pytest.mark.parametrize("b", [0.1, 1.0])
@pytest.mark.parametrize("variance", ["large", "small"])
def test_ddpm_table_rows_vs_posterior(steps, b, variance):
    table = P.pixel_ddpm_table(steps, b, 20.0, variance)
    assert table.dtype == np.float64 and table.shape == (steps, len(D.TABLE_COLUMNS))
    for i, row in enumerate(table):
        t = (steps - i) / steps
        s = t - 1 / steps
        t_model, a_t, s_t, c_x0, c_eps, c_z, sigma = row
        assert t_model == pytest.approx(t, abs=1e-15)
        q = ref_posterior(t, s, b, 20.0)
        assert (a_t, s_t) == pytest.approx((q["a_t"], q["s_t"]), rel=1e-10)
        assert c_eps == 0
        if i == steps - 1:  # the last step returns the x0 estimate, as the original does
            assert (c_x0, c_z, sigma) == (1.0, 0.0, 0.0)
        else:
            assert (c_x0, c_z) == pytest.approx((q["c_x0"], q["c_z"]), rel=1e-9)
            assert sigma ** 2 == pytest.approx(q[variance], rel=1e-9)


@pytest.mark.parametrize("steps", [1, 10, 25])
@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_ddim_table_rows_vs_closed_form(steps, eta):
    b = 0.1
    table = P.pixel_ddim_table(steps, b, 20.0, eta)
    for i, row in enumerate(table):
        t = (steps - i) / steps
        s = t - 1 / steps
        t_model, a_t, s_t, c_x0, c_eps, c_z, sigma = row
        q = ref_posterior(t, s, b, 20.0)
        assert t_model == pytest.approx(t, abs=1e-15) and (a_t, s_t) == pytest.approx((q["a_t"], q["s_t"]), rel=1e-10)
        assert c_z == 0
        if i == steps - 1:
            assert (c_x0, c_eps, sigma) == (1.0, 0.0, 0.0)
            continue
        # x_s = alpha_s x0 + sqrt(sigma_s^2 - sig^2) eps + sig noise, sig^2 = eta^2 (1 - r) sigma_s^2.
        sig = eta * math.sqrt(q["small"])
        assert sigma == pytest.approx(sig, rel=1e-9, abs=1e-15)
        assert c_x0 == pytest.approx(q["a_s"], rel=1e-10)
        assert c_eps == pytest.approx(math.sqrt(q["s_s"] ** 2 - sig ** 2), rel=1e-9)
    if eta == 1.0 and steps > 1:  # DDIM eta = 1 has DDPM's 'small' variance
        np.testing.assert_allclose(table[:, 6], P.pixel_ddpm_table(steps, b, 20.0, "small")[:, 6], rtol=1e-9)


def test_ddim_eta0_step_is_the_originals_update(rng):
    """One DDIM step: x_s = alpha_s x_hat + sigma_s eps_hat with eps_hat = (x_t - alpha_t x_hat) / sigma_t."""
    table = P.pixel_ddim_table(10)
    z, out = rng.standard_normal((2, 1, 4, 4)), np.tanh(rng.standard_normal((2, 1, 4, 4)))
    for i in range(9):
        q = ref_posterior((10 - i) / 10, (9 - i) / 10, 0.1, 20.0)
        want = q["a_s"] * out + q["s_s"] * (z - q["a_t"] * out) / q["s_t"]
        np.testing.assert_allclose(D.reference_step(z, out, table[i], "x", clip=1.0), want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- the C++ sampler on pixel tables
PIXEL_TABLES = {
    "ddpm-large": lambda: P.pixel_ddpm_table(10),
    "ddpm-small": lambda: P.pixel_ddpm_table(10, variance="small"),
    "ddim": lambda: P.pixel_ddim_table(10),
    "ddim-eta0.5": lambda: P.pixel_ddim_table(7, 0.3, eta=0.5),
}


@pytest.mark.parametrize("table_name", sorted(PIXEL_TABLES))
@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
def test_cpp_sampler_runs_pixel_tables(rng, table_name, prediction):
    table = PIXEL_TABLES[table_name]()
    seeds = [int(s) for s in rng.integers(2 ** 63, size=2)]
    shape = (1, 6, 5)
    got = sample_latents(mixing_denoiser, seeds, 3, shape, table, prediction, clip=1.0, renormalize=False)
    want = D.reference_sample(mixing_denoiser, seeds, 3, shape, table, prediction, clip=1.0, renorm=False)
    assert got.shape == (6, *shape) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5
    assert np.all(np.abs(got) <= 1.0)  # the last step returns the clipped x0 estimate


@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
def test_two_point_denoiser_in_every_parameterisation(rng, prediction):
    """The three parameterisations of the same perfect denoiser sample the same x_hat."""
    table = P.pixel_ddpm_table(10)
    seeds = [int(rng.integers(2 ** 63))]
    ref = sample_latents(two_point_denoiser(0.4, 0.1, 20.0, "x"), seeds, 8, (1, 4, 4), table, "x", 1.0, False)
    got = sample_latents(two_point_denoiser(0.4, 0.1, 20.0, prediction), seeds, 8, (1, 4, 4), table, prediction, 1.0, False)
    np.testing.assert_allclose(got, ref, atol=2e-4)


@pytest.mark.parametrize("steps,bias_allowance", [(50, 0.0), (10, 0.05)])
def test_ddpm_samples_a_two_mode_distribution(rng, steps, bias_allowance):
    """Data: +1 everywhere with probability p, else -1 everywhere. With the exact posterior mean
    as x-predictor, the DDPM sampler must give all-(+1) samples about a fraction p of the time
    (a sampler collapsing to the mean would give sign(2p - 1) every time). 50 steps are within
    sampling error; the paper's 10 steps have a small discretisation bias (~0.03 measured)."""
    p = float(rng.uniform(0.2, 0.8))
    n = 400
    denoise = two_point_denoiser(p, 0.1, 20.0)
    x_hat = sample_latents(denoise, [int(rng.integers(2 ** 63))], n, (1, 4, 4), P.pixel_ddpm_table(steps),
                           "x", clip=1.0, renormalize=False)
    masks = (x_hat > 0).reshape(n, -1)  # the segmentation is x_hat > 0
    assert np.all(masks.all(1) | ~masks.any(1).astype(bool))  # every sample is one of the two modes
    frac = masks.all(1).mean()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(frac - p) <= 4 * se + bias_allowance, (frac, p)
