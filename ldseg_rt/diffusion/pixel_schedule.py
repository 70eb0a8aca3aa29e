"""The pixel-space family's diffusion process (Christensen et al., SCIA 2025).

A binary mask m is embedded as x0 = 2m - 1 and diffused by a continuous-time variance
preserving process on t in [0, 1],

    x_t = alpha(t) x0 + sigma(t) eps,   alpha^2 = g_b(t),  sigma^2 = 1 - g_b(t),

with the cosine schedule g(t) = cos^2(pi t / 2) and the paper's input scaling b:
g_b = b^2 g / ((b^2 - 1) g + 1), i.e. SNR_b(t) = b^2 SNR(t). The log-SNR is kept in
[-clamp, clamp] (20 by default), so alpha(1) > 0 and sigma(0) > 0.

Sampling runs on the same step tables as the LDSeg family (ldseg_rt.diffusion.tables): one row per
step, t_model is the continuous t handed to the denoiser, and the C++ loop
(ldseg_rt.diffusion.sampler.sample_latents, renormalize=False, clip=1) or the float64 oracle
(ldseg_rt.diffusion.oracle.reference_sample) runs them. The time grid is the original's: steps
t = 1, (S-1)/S, ..., 1/S, each leading to s = t - 1/S; the last step returns the x0 estimate
itself (the original returns pred_x at i = 0). The segmentation is x_hat > 0.

Two ways to keep the log-SNR finite at the ends:
  ends='clamp'   logSNR_b(t) = clip(log(g / (1 - g)) + 2 log b, -clamp, clamp). SNR_b = b^2 SNR
                 holds exactly wherever the clamp is inactive (the default).
  ends='affine'  the original code's (AmbDiffSeg diffusion.py, logsnr_wrap): g_b is mapped
                 affinely so that g(0) = sigmoid(clamp) and g(1) = sigmoid(-clamp). It moves
                 g by about 2e-9 everywhere; on a 10-step grid the two agree to ~1e-5 relative.

The training loss over this process is ldseg_rt.training.pixel_loss.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from ..errors import InvalidArgumentError
from .constants import PREDICTIONS
from .tables import ddim_table, ddpm_table

DEFAULT_INPUT_SCALE = 0.1
DEFAULT_CLAMP = 20.0
ENDS = ("clamp", "affine")
SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("large", "small")


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def as_float64(x):
    """x as float64: a torch tensor stays a tensor (on its device), anything else becomes numpy."""
    if _is_torch(x):
        return x.to(torch.float64)
    return np.asarray(x, np.float64)


def sigmoid(x):
    return torch.sigmoid(x) if _is_torch(x) else expit(x)


def xp_of(x):
    return torch if _is_torch(x) else np


def _check_t(t):
    """Times in [0, 1]; numpy inputs are checked (a torch check would synchronise the device)."""
    t = as_float64(t)
    if not _is_torch(t) and not (np.all(t >= 0) and np.all(t <= 1)):
        raise InvalidArgumentError(f"t must lie in [0, 1], got values in [{np.min(t)}, {np.max(t)}]")
    return t


def _check_process(b, clamp, ends) -> None:
    if not b > 0:
        raise InvalidArgumentError(f"input scale b must be > 0, got {b}")
    if not clamp > 0:
        raise InvalidArgumentError(f"logSNR clamp must be > 0, got {clamp}")
    if ends not in ENDS:
        raise InvalidArgumentError(f"ends must be one of {ENDS}, got {ends!r}")


def _raw_logsnr(t, b: float):
    """log SNR_b(t) = log(g / (1 - g)) + 2 log b, unclamped: -2 log tan(pi t / 2) + 2 log b
    (+inf at t = 0), which keeps full precision where g is close to 0 or 1."""
    xp = xp_of(t)
    if xp is np:
        with np.errstate(divide="ignore"):
            return -2.0 * np.log(np.tan(t * (math.pi / 2))) + 2.0 * math.log(b)
    return -2.0 * torch.log(torch.tan(t * (math.pi / 2))) + 2.0 * math.log(b)


def logsnr(t, b: float = 1.0, clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """log SNR_b(t), within [-clamp, clamp]. float64; numpy in, numpy out; torch in, torch out."""
    _check_process(b, clamp, ends)
    t = _check_t(t)
    raw = _raw_logsnr(t, b)
    if ends == "clamp":
        return xp_of(t).clip(raw, -clamp, clamp)
    # The original's affine map g -> slope g + bias with g(0) = 1 -> sigmoid(clamp) and
    # g(1) -> sigmoid(-clamp). 1 - g is kept as slope (1 - g) + sigmoid(-clamp), exact
    # because the cosine g(0) is exactly 1, so nothing cancels near t = 0.
    lo = float(expit(-clamp))
    g1 = float(expit(_raw_logsnr(np.float64(1.0), b)))
    slope = (1.0 - 2.0 * lo) / (1.0 - g1)
    bias = lo - g1 * slope
    xp = xp_of(t)
    return xp.log(slope * sigmoid(raw) + bias) - xp.log(slope * sigmoid(-raw) + lo)


def scaled_gamma(t, b: float = 1.0, clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """g_b(t) = alpha(t)^2 = b^2 g / ((b^2 - 1) g + 1), with the log-SNR clamp: sigmoid(logSNR_b)."""
    return sigmoid(logsnr(t, b, clamp, ends))


def alpha_sigma(t, b: float = 1.0, clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """(alpha, sigma) = (sqrt(g_b), sqrt(1 - g_b)), each from the log-SNR without cancellation."""
    lam = logsnr(t, b, clamp, ends)
    return xp_of(lam).sqrt(sigmoid(lam)), xp_of(lam).sqrt(sigmoid(-lam))


@dataclass(frozen=True)
class PixelProcess:
    """The diffusion settings the tables and the training loss need. Field names follow
    ldseg_rt.configs.AmbiguousConfig, so `PixelProcess.of(config)` reads one."""
    input_scale: float = DEFAULT_INPUT_SCALE
    logsnr_clamp: float = DEFAULT_CLAMP
    prediction: str = "x"
    ends: str = "clamp"
    sampler: str = "ddpm"
    variance: str = "large"
    steps: int = 10

    def __post_init__(self):
        _check_process(self.input_scale, self.logsnr_clamp, self.ends)
        if self.prediction not in PREDICTIONS:
            raise InvalidArgumentError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.sampler not in SAMPLERS:
            raise InvalidArgumentError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.variance not in VARIANCES:
            raise InvalidArgumentError(f"variance must be one of {VARIANCES}, got {self.variance!r}")

    @classmethod
    def of(cls, params) -> "PixelProcess":
        """From a PixelProcess, a mapping or any object with some of these attributes (an
        AmbiguousConfig); missing fields take the defaults."""
        if isinstance(params, cls):
            return params
        names = [f.name for f in dataclasses.fields(cls)]
        if isinstance(params, dict):
            return cls(**{n: params[n] for n in names if n in params})
        return cls(**{n: getattr(params, n) for n in names if hasattr(params, n)})

    def logsnr(self, t):
        return logsnr(t, self.input_scale, self.logsnr_clamp, self.ends)

    def alpha_sigma(self, t):
        return alpha_sigma(t, self.input_scale, self.logsnr_clamp, self.ends)


def pixel_timesteps(steps: int) -> np.ndarray:
    """The original's grid in run order: t = 1, (S-1)/S, ..., 1/S (float64)."""
    steps = operator.index(steps)
    if steps < 1:
        raise InvalidArgumentError(f"steps must be >= 1, got {steps}")
    return np.arange(steps, 0, -1, dtype=np.float64) / steps


def pixel_ddpm_table(steps: int, b: float = DEFAULT_INPUT_SCALE, clamp: float = DEFAULT_CLAMP,
                     variance: str = "large", ends: str = "clamp") -> np.ndarray:
    """DDPM ancestral: each step t -> s = t - 1/S draws from the posterior q(x_s | x_t, x0_hat)
    with variance sigma_{t|s}^2 = 1 - g_b(t) / g_b(s) ('large', the original's default) or the
    posterior's own (1 - g_b(s)) / (1 - g_b(t)) * sigma_{t|s}^2 ('small'); the last step
    returns x0_hat. Columns: ldseg_rt.diffusion.TABLE_COLUMNS."""
    t = pixel_timesteps(steps)
    return ddpm_table(t, scaled_gamma(t, b, clamp, ends), variance)


def pixel_ddim_table(steps: int, b: float = DEFAULT_INPUT_SCALE, clamp: float = DEFAULT_CLAMP,
                     eta: float = 0.0, ends: str = "clamp") -> np.ndarray:
    """DDIM on the same grid: x_s = alpha_s x0_hat + sqrt(1 - g_b(s) - sigma^2) eps_hat + sigma noise,
    sigma = eta * the posterior's standard deviation (eta = 0, the original's DDIM, is
    deterministic); the last step returns x0_hat."""
    t = pixel_timesteps(steps)
    return ddim_table(t, scaled_gamma(t, b, clamp, ends), eta)


def pixel_table(params=None, steps: int | None = None, sampler: str | None = None, eta: float = 0.0) -> np.ndarray:
    """The step table a PixelProcess / AmbiguousConfig asks for (its sampler, variance and
    steps unless overridden). eta applies to DDIM only."""
    p = PixelProcess.of(params if params is not None else PixelProcess())
    steps = p.steps if steps is None else steps
    sampler = p.sampler if sampler is None else sampler
    if sampler == "ddpm":
        if eta:
            raise InvalidArgumentError(f"eta applies to the DDIM sampler only, got eta={eta} with 'ddpm'")
        return pixel_ddpm_table(steps, p.input_scale, p.logsnr_clamp, p.variance, p.ends)
    if sampler == "ddim":
        return pixel_ddim_table(steps, p.input_scale, p.logsnr_clamp, eta, p.ends)
    raise InvalidArgumentError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
