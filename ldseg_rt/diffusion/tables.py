"""Step tables: the one form every sampler in ldseg_rt runs.

Every sampler (the C++ loop, the Triton step kernel, the float64 oracle) runs from a *step
table* built here: one row per step, in the order the steps run (most noise first),

    t_model  the time value handed to the denoiser
    a_t      sqrt(alpha_bar_t)        s_t  sqrt(1 - alpha_bar_t)
    c_x0, c_eps, c_z, sigma           z_prev = c_x0 x0 + c_eps eps + c_z z_t + sigma noise

where (x0, eps) are recovered from the model output by the prediction type. DDIM (any
eta) and DDPM ancestral both fit this form, so the loops that consume a table never
repeat a schedule formula. The columns are constants.TABLE_COLUMNS.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .schedules import cosine_alpha_bar, ldseg_timesteps


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
        raise InvalidArgumentError(f"eta must be >= 0, got {eta}")
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
        raise InvalidArgumentError(f"variance must be 'small' or 'large', got {variance!r}")
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
