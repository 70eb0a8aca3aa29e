"""Schedule and step-table math against independent closed forms and LDSeg's own update."""
import math

import numpy as np
import pytest

from ldseg_rt import diffusion as D


def test_cosine_schedule_values():
    t = np.array([0.0, 250.0, 999.0, 500.5])
    f = [math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for u in t]
    want = np.array(f) / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(D.cosine_alpha_bar(t), want, rtol=1e-14)
    grid = D.cosine_alpha_bar(np.linspace(0, 999, 1000))
    assert grid[0] == 1.0 and np.all(np.diff(grid) < 0) and grid[-1] > 0


@pytest.mark.parametrize("steps", [1, 2, 15, 50])
def test_ldseg_grid(steps):
    t = D.ldseg_timesteps(steps)
    assert len(t) == steps and t[-1] == 0.0 and t[0] == (999.0 if steps > 1 else 0.0)
    if steps > 1:
        np.testing.assert_allclose(np.diff(t), -999 / (steps - 1))


def ldseg_original_update(z, eps_hat, acum, acum1, s, noise):
    """LDSeg's sampler.py update for a non-final step, transcribed as an expression."""
    return (np.sqrt(acum1) * ((z - np.sqrt(1 - acum) * eps_hat) / np.sqrt(acum))
            + np.sqrt(1 - acum1 - s ** 2) * eps_hat + s * noise)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ldseg_table_reproduces_original_update(rng, eta):
    steps = 15
    table = D.ldseg_table(steps, eta)
    t_grid = np.linspace(0, 999, steps)
    acp = D.cosine_alpha_bar(t_grid)
    for i, row in enumerate(table):
        j = steps - 1 - i  # index into the ascending grid
        z, eps_hat, noise = rng.standard_normal((3, 5, 4))
        got = D.reference_step(z, eps_hat, row, "eps", noise=noise)
        if j == 0:  # the original's final branch: x0 estimate + sqrt(beta = 0) noise
            want = z
        else:
            acum, acum1 = acp[j], acp[j - 1]
            s = eta * np.sqrt(((1 - acum1) / (1 - acum)) * (1 - acum / acum1))
            want = ldseg_original_update(z, eps_hat, acum, acum1, s, noise)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert row[0] == t_grid[j]


def test_ddpm_small_is_ddim_eta_one():
    """DDIM with eta = 1, rewritten in terms of (x0, z), is DDPM's posterior q(z_prev|z, x0)."""
    t = np.linspace(980, 20, 12)
    acp = D.cosine_alpha_bar(t)
    ddim, ddpm = D.ddim_table(t, acp, eta=1.0), D.ddpm_table(t, acp, "small")
    a, s, c_x0, c_eps, _, sigma = ddim[:, 1:].T
    np.testing.assert_allclose(ddpm[:, 3], c_x0 - c_eps * a / s, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ddpm[:, 5], c_eps / s, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ddpm[:, 6], sigma, rtol=1e-10)
    assert np.all(ddpm[:, 4] == 0)


def test_ddpm_large_variance_is_beta():
    t = np.linspace(900, 100, 9)
    acp = D.cosine_alpha_bar(t)
    prev = np.append(acp[1:], 1.0)
    sigma = D.ddpm_table(t, acp, "large")[:, 6]
    np.testing.assert_allclose(sigma[:-1] ** 2, (1 - acp / prev)[:-1], rtol=1e-12)
    assert sigma[-1] == 0.0


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_parameterisations_round_trip(rng, prediction):
    a = rng.uniform(0.05, 0.99)
    s = math.sqrt(1 - a * a)
    x0, eps = rng.standard_normal((2, 3, 7))
    z = a * x0 + s * eps
    out = {"eps": eps, "x": x0, "v": D.v_from_x0_eps(x0, eps, a, s)}[prediction]
    got_x0, got_eps = D.to_x0_eps(out, z, a, s, prediction)
    np.testing.assert_allclose(got_x0, x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got_eps, eps, rtol=1e-9, atol=1e-9)


def ideal_output(z, a, s, target, prediction):
    """What a perfect model of the point mass x0 = target predicts at z."""
    eps = (z - a * target) / s
    return {"eps": eps, "x": target, "v": D.v_from_x0_eps(target, eps, a, s)}[prediction]


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
@pytest.mark.parametrize("kind", ["ddim0", "ddim0.6", "ddpm-small", "ddpm-large"])
def test_ideal_denoiser_lands_on_the_data(rng, prediction, kind):
    t = np.linspace(990, 10, 8)
    acp = D.cosine_alpha_bar(t)
    table = (D.ddim_table(t, acp, float(kind[4:])) if kind.startswith("ddim")
             else D.ddpm_table(t, acp, kind.split("-")[1]))
    target = rng.uniform(-1, 1, size=(1, 3, 4))
    lookup = {round(float(r[0]), 6): r for r in table}

    def denoise(z, tt):
        row = lookup[round(float(tt[0]), 6)]
        return ideal_output(z.astype(np.float64), row[1], row[2], target, prediction)

    z = D.reference_sample(denoise, [7, 8], 3, (1, 3, 4), table, prediction, renorm=False)
    np.testing.assert_allclose(z, np.broadcast_to(target, z.shape), atol=1e-5)


def test_clip_rederives_eps():
    row = D.ddim_table([500.0], D.cosine_alpha_bar([500.0]))[0]
    row[3:6] = [0.0, 1.0, 0.0]  # output eps only
    z = np.array([[[5.0]]])
    a, s = row[1], row[2]
    got = D.reference_step(z, np.zeros_like(z), row, "eps", clip=1.0)
    np.testing.assert_allclose(got, (z - a * 1.0) / s)


def test_renormalize_per_sample(rng):
    z = rng.standard_normal((4, 1, 6, 5)) * np.array([1, 3, 0.1, 10])[:, None, None, None] + 7
    out = D.renormalize(z)
    for i in range(4):
        np.testing.assert_allclose(out[i].mean(), 0, atol=1e-12)
        np.testing.assert_allclose(out[i].std(), z[i].std() / (z[i].std() + 1e-5), rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="prediction"):
        D.to_x0_eps(np.zeros(2), np.zeros(2), 0.5, 0.5, "score")
    with pytest.raises(ValueError, match="eta"):
        D.ddim_table([1.0], [0.5], eta=-1)
    with pytest.raises(ValueError, match="variance"):
        D.ddpm_table([1.0], [0.5], "medium")
