"""Diffusion math: schedules, parameterisations, step tables and the float64 oracle.

Every sampler in ldseg_rt (the C++ loop, later the Triton step kernel) runs from a *step
table* built here: one row per step, in the order the steps run (most noise first),

    t_model  the time value handed to the denoiser
    a_t      sqrt(alpha_bar_t)        s_t  sqrt(1 - alpha_bar_t)
    c_x0, c_eps, c_z, sigma           z_prev = c_x0 x0 + c_eps eps + c_z z_t + sigma noise

where (x0, eps) are recovered from the model output by the prediction type. DDIM (any
eta) and DDPM ancestral both fit this form, so the loops that consume a table never
repeat a schedule formula. `reference_sample` is the float64 numpy oracle.
"""
from __future__ import annotations

import numpy as np

from . import philox

TABLE_COLUMNS = ("t_model", "a_t", "s_t", "c_x0", "c_eps", "c_z", "sigma")
PREDICTIONS = ("eps", "x", "v")
RENORM_EPS = 1e-5  # LDSeg's mean_variance_normalization: (z - mean) / (std + 1e-5)


# ---------------------------------------------------------------- schedules
def cosine_alpha_bar(t, timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """Discrete-time cosine schedule (Nichol & Dhariwal) at float times t in [0, T)."""
    def f(u):
        return np.cos((np.asarray(u, np.float64) / timesteps + s) / (1 + s) * np.pi / 2) ** 2
    return f(t) / f(0.0)


def ldseg_timesteps(steps: int, timesteps: int = 1000) -> np.ndarray:
    """LDSeg's float grid t = linspace(0, T - 1, S), returned in run order (T - 1 first).
    As in the original, S = 1 is the grid [0]: a single step at t = 0 leaves z unchanged."""
    return np.linspace(0.0, timesteps - 1, steps)[::-1].copy()


# ---------------------------------------------------------------- parameterisations
def to_x0_eps(out, z, a, s, prediction: str):
    """(x0, eps) implied by a model output `out` at noisy z = a x0 + s eps."""
    if prediction == "eps":
        return (z - s * out) / a, out
    if prediction == "x":
        return out, _eps_from_x0(z, out, a, s)
    if prediction == "v":
        return a * z - s * out, s * z + a * out
    raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def _eps_from_x0(z, x0, a, s):
    return (z - a * x0) / s if s > 0 else np.zeros_like(z)


def v_from_x0_eps(x0, eps, a, s):
    """The v target (Salimans & Ho): v = a eps - s x0."""
    return a * eps - s * x0


# ---------------------------------------------------------------- step tables
def _stack(t_model, alpha_bar, c_x0, c_eps, c_z, sigma) -> np.ndarray:
    alpha_bar = np.asarray(alpha_bar, np.float64)
    table = np.stack([np.asarray(t_model, np.float64), np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar),
                      c_x0, c_eps, c_z, sigma], axis=1)
    return np.ascontiguousarray(table)


def _previous(alpha_bar: np.ndarray) -> np.ndarray:
    """alpha_bar of the step each row leads to; the last step leads to x0 (alpha_bar 1)."""
    return np.append(alpha_bar[1:], 1.0)


def ddim_table(t_model, alpha_bar, eta: float = 0.0) -> np.ndarray:
    """DDIM (Song et al.) with stochasticity eta; eta = 1 is DDPM's posterior variance."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar = np.asarray(alpha_bar, np.float64)
    prev = _previous(alpha_bar)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (1 - prev) / (1 - alpha_bar) * (1 - alpha_bar / prev)
    sigma = eta * np.sqrt(np.where(prev < 1, var, 0.0))
    c_eps = np.sqrt(np.maximum(1 - prev - sigma ** 2, 0.0))
    return _stack(t_model, alpha_bar, np.sqrt(prev), c_eps, np.zeros_like(prev), sigma)


def ddpm_table(t_model, alpha_bar, variance: str = "small") -> np.ndarray:
    """DDPM ancestral: the posterior mean q(z_prev | z_t, x0) plus noise of variance
    beta_tilde ('small') or beta ('large'); the final step to x0 adds none."""
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    alpha_bar = np.asarray(alpha_bar, np.float64)
    prev = _previous(alpha_bar)
    beta = 1 - alpha_bar / prev
    noisy = 1 - alpha_bar > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        c_x0 = np.where(noisy, np.sqrt(prev) * beta / (1 - alpha_bar), 1.0)
        c_z = np.where(noisy, np.sqrt(1 - beta) * (1 - prev) / (1 - alpha_bar), 0.0)
        var = beta * (1 - prev) / (1 - alpha_bar) if variance == "small" else beta
    sigma = np.sqrt(np.where(noisy & (prev < 1), var, 0.0))
    return _stack(t_model, alpha_bar, c_x0, np.zeros_like(prev), c_z, sigma)


def ldseg_table(steps: int, eta: float = 0.0, timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """LDSeg's sampler: DDIM on the float grid linspace(0, T - 1, S) of the cosine schedule.
    Its last step sits at t = 0 (alpha_bar = 1), where x0 = z: the original's final call."""
    t = ldseg_timesteps(steps, timesteps)
    return ddim_table(t, cosine_alpha_bar(t, timesteps, s), eta)


# ---------------------------------------------------------------- the oracle
def renormalize(z: np.ndarray) -> np.ndarray:
    """Per sample (first axis): zero mean, unit variance, as LDSeg does after every step."""
    axes = tuple(range(1, z.ndim))
    return (z - z.mean(axis=axes, keepdims=True)) / (z.std(axis=axes, keepdims=True) + RENORM_EPS)


def reference_step(z, out, row, prediction: str, clip: float = 0.0, noise=None):
    """One step of the table in float64: model output -> (x0, eps) -> z_prev."""
    _, a, s, c_x0, c_eps, c_z, sigma = row
    x0, eps = to_x0_eps(out, z, a, s, prediction)
    if clip > 0:
        x0 = np.clip(x0, -clip, clip)
        eps = _eps_from_x0(z, x0, a, s)
    z_prev = c_x0 * x0 + c_eps * eps + c_z * z
    return z_prev + sigma * noise if sigma != 0 else z_prev


def _noise(seeds, n, latent_shape, step, stream) -> np.ndarray:
    numel = int(np.prod(latent_shape))
    rows = [philox.normal(int(seed), k, step, stream, numel) for seed in seeds for k in range(n)]
    return np.stack(rows).reshape(len(seeds) * n, *latent_shape)


def reference_sample(denoise, seeds, n: int, latent_shape, table: np.ndarray, prediction: str = "eps",
                     clip: float = 0.0, renorm: bool = True) -> np.ndarray:
    """Slow, plain float64 sampler with the same noise stream as the C++ loop.

    Batch rows are (image, sample) pairs, image-major; `denoise(z float32, t float32)` is
    called once per step for the whole batch, as the C++ loop calls it.
    """
    z = _noise(seeds, n, latent_shape, 0, philox.STREAM_INIT)
    if renorm:
        z = renormalize(z)
    for i, row in enumerate(np.asarray(table, np.float64)):
        t = np.full(len(z), row[0], np.float32)
        out = np.asarray(denoise(z.astype(np.float32), t), np.float64)
        noise = _noise(seeds, n, latent_shape, i, philox.STREAM_STEP) if row[6] != 0 else None
        z = reference_step(z, out, row, prediction, clip, noise)
        if renorm:
            z = renormalize(z)
    return z
