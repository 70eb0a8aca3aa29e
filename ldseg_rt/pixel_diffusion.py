"""The pixel-space family's diffusion process (SPEC section 1 P; Christensen et al., SCIA 2025).

A binary mask m is embedded as x0 = 2m - 1 and diffused by a continuous-time variance
preserving process on t in [0, 1],

    x_t = alpha(t) x0 + sigma(t) eps,   alpha^2 = g_b(t),  sigma^2 = 1 - g_b(t),

with the cosine schedule g(t) = cos^2(pi t / 2) and the paper's input scaling b:
g_b = b^2 g / ((b^2 - 1) g + 1), i.e. SNR_b(t) = b^2 SNR(t). The log-SNR is kept in
[-clamp, clamp] (20 by default), so alpha(1) > 0 and sigma(0) > 0.

Sampling runs on the same step tables as the LDSeg family (ldseg_rt.diffusion): one row per
step, t_model is the continuous t handed to the denoiser, and the C++ loop
(ldseg_rt.sampler.sample_latents, renormalize=False, clip=1) or the float64 oracle
(ldseg_rt.diffusion.reference_sample) runs them. The time grid is the original's: steps
t = 1, (S-1)/S, ..., 1/S, each leading to s = t - 1/S; the last step returns the x0 estimate
itself (the original returns pred_x at i = 0). The segmentation is x_hat > 0.

Two ways to keep the log-SNR finite at the ends:
  ends='clamp'   logSNR_b(t) = clip(log(g / (1 - g)) + 2 log b, -clamp, clamp). SNR_b = b^2 SNR
                 holds exactly wherever the clamp is inactive (the default).
  ends='affine'  the original code's (AmbDiffSeg diffusion.py, logsnr_wrap): g_b is mapped
                 affinely so that g(0) = sigmoid(clamp) and g(1) = sigmoid(-clamp). It moves
                 g by about 2e-9 everywhere; on a 10-step grid the two agree to ~1e-5 relative.

Training (as in the original's train_loss_step): t from `sample_t` (stratified uniform),
eps ~ N(0, I), x_t from `training_target`, loss = mean over the batch of
w(t) * mean over pixels (x_hat - x0)^2, where x_hat is the model output converted to x
(`pixel_loss`). The weights w are functions of the scaled, clamped SNR.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from .diffusion import PREDICTIONS, ddim_table, ddpm_table, v_from_x0_eps
from .errors import InvalidArgumentError

DEFAULT_INPUT_SCALE = 0.1
DEFAULT_CLAMP = 20.0
WEIGHTINGS = ("snr", "snr_plus1", "max_snr_1", "uniform", "sigmoid")
ENDS = ("clamp", "affine")
SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("large", "small")
# The original code's names for the weightings (case-insensitive); 'sigmoid_K' there is sigmoid with k = K.
_WEIGHTING_ALIASES = {"snr_trunc": "max_snr_1", "snr+1": "snr_plus1"}


# ---------------------------------------------------------------- numpy / torch
def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _float64(x):
    """x as float64: a torch tensor stays a tensor (on its device), anything else becomes numpy."""
    if _is_torch(x):
        return x.to(torch.float64)
    return np.asarray(x, np.float64)


def _sigmoid(x):
    return torch.sigmoid(x) if _is_torch(x) else expit(x)


def _xp(x):
    return torch if _is_torch(x) else np


def _check_t(t):
    """Times in [0, 1]; numpy inputs are checked (a torch check would synchronise the device)."""
    t = _float64(t)
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


# ---------------------------------------------------------------- the schedule
def gamma(t):
    """The cosine schedule g(t) = cos^2(pi t / 2) = alpha^2 before input scaling and clamping."""
    t = _check_t(t)
    return _xp(t).cos(t * (math.pi / 2)) ** 2


def _raw_logsnr(t, b: float):
    """log SNR_b(t) = log(g / (1 - g)) + 2 log b, unclamped: -2 log tan(pi t / 2) + 2 log b
    (+inf at t = 0), which keeps full precision where g is close to 0 or 1."""
    xp = _xp(t)
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
        return _xp(t).clip(raw, -clamp, clamp)
    # The original's affine map g -> slope g + bias with g(0) = 1 -> sigmoid(clamp) and
    # g(1) -> sigmoid(-clamp). 1 - g is kept as slope (1 - g) + sigmoid(-clamp), exact
    # because the cosine g(0) is exactly 1, so nothing cancels near t = 0.
    lo = float(expit(-clamp))
    g1 = float(expit(_raw_logsnr(np.float64(1.0), b)))
    slope = (1.0 - 2.0 * lo) / (1.0 - g1)
    bias = lo - g1 * slope
    xp = _xp(t)
    return xp.log(slope * _sigmoid(raw) + bias) - xp.log(slope * _sigmoid(-raw) + lo)


def scaled_gamma(t, b: float = 1.0, clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """g_b(t) = alpha(t)^2 = b^2 g / ((b^2 - 1) g + 1), with the log-SNR clamp: sigmoid(logSNR_b)."""
    return _sigmoid(logsnr(t, b, clamp, ends))


def alpha_sigma(t, b: float = 1.0, clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """(alpha, sigma) = (sqrt(g_b), sqrt(1 - g_b)), each from the log-SNR without cancellation."""
    lam = logsnr(t, b, clamp, ends)
    return _xp(lam).sqrt(_sigmoid(lam)), _xp(lam).sqrt(_sigmoid(-lam))


# ---------------------------------------------------------------- loss weights
def _parse_weighting(kind: str, k: float) -> tuple[str, float]:
    name = str(kind).lower()
    name = _WEIGHTING_ALIASES.get(name, name)
    if name.startswith("sigmoid_"):  # the original's 'sigmoid_K'
        try:
            return "sigmoid", float(name.split("_", 1)[1])
        except ValueError:
            pass
    if name not in WEIGHTINGS:
        raise InvalidArgumentError(f"unknown loss weighting {kind!r}; expected one of {WEIGHTINGS}")
    return name, float(k)


def loss_weight(logsnr_t, kind: str = "snr_plus1", k: float = 0.0):
    """w(t) for the x-space MSE, as a function of the (scaled, clamped) log-SNR:
    'snr' SNR, 'snr_plus1' SNR + 1, 'max_snr_1' max(SNR, 1), 'uniform' 1, 'sigmoid'
    sigmoid(logSNR - k) (k = 0 is the original's 'sigmoid', i.e. g_b itself)."""
    name, k = _parse_weighting(kind, k)
    lam = _float64(logsnr_t)
    xp = _xp(lam)
    if name == "uniform":
        return xp.ones_like(lam)
    if name == "sigmoid":
        return _sigmoid(lam - k)
    snr = xp.exp(lam)
    if name == "snr":
        return snr
    if name == "snr_plus1":
        return snr + 1.0
    return xp.maximum(snr, xp.ones_like(snr))


# ---------------------------------------------------------------- the process's parameters
@dataclass(frozen=True)
class PixelProcess:
    """The diffusion settings the loss and the tables need. Field names follow
    ldseg_rt.configs.AmbiguousConfig, so `PixelProcess.of(config)` reads one."""
    input_scale: float = DEFAULT_INPUT_SCALE
    logsnr_clamp: float = DEFAULT_CLAMP
    prediction: str = "x"
    loss_weighting: str = "snr_plus1"
    sigmoid_bias: float = 0.0  # k of the 'sigmoid' weighting
    ends: str = "clamp"
    sampler: str = "ddpm"
    variance: str = "large"
    steps: int = 10

    def __post_init__(self):
        _check_process(self.input_scale, self.logsnr_clamp, self.ends)
        if self.prediction not in PREDICTIONS:
            raise InvalidArgumentError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        _parse_weighting(self.loss_weighting, self.sigmoid_bias)
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

    def weight(self, t):
        return loss_weight(self.logsnr(t), self.loss_weighting, self.sigmoid_bias)


# ---------------------------------------------------------------- training
def sample_t(batch: int, generator: torch.Generator | None = None, device=None, stratified: bool = True) -> torch.Tensor:
    """Training times in [0, 1), float32. The original's default ('uniform_low_d'): one time
    in each of the `batch` equal strata, in random order; stratified=False is plain U[0, 1)."""
    batch = operator.index(batch)
    if batch < 1:
        raise InvalidArgumentError(f"batch must be >= 1, got {batch}")
    u = torch.rand(batch, generator=generator)
    if stratified:
        u = (torch.randperm(batch, generator=generator) + u) / batch
    return u.to(device) if device is not None else u


def _per_sample(c, like: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient (B,) shaped to broadcast over `like` (B, ...), in its dtype."""
    c = torch.as_tensor(c, device=like.device)
    return c.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def training_target(x0: torch.Tensor, eps: torch.Tensor, t, b: float = DEFAULT_INPUT_SCALE,
                    prediction: str = "x", clamp: float = DEFAULT_CLAMP, ends: str = "clamp"):
    """(x_t, target): the model's noisy input x_t = alpha x0 + sigma eps for per-sample times
    t (B,), and what a perfect model of this prediction type outputs (x0, eps or
    v = alpha eps - sigma x0). Coefficients are computed in float64, applied in x0's dtype."""
    if prediction not in PREDICTIONS:
        raise InvalidArgumentError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
    a, s = alpha_sigma(torch.as_tensor(t), b, clamp, ends)
    a, s = _per_sample(a, x0), _per_sample(s, x0)
    x_t = a * x0 + s * eps
    target = {"x": x0, "eps": eps, "v": v_from_x0_eps(x0, eps, a, s)}[prediction]
    return x_t, target


def pixel_loss(model_out: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t, params=None,
               reduction: str = "mean") -> torch.Tensor:
    """The paper's loss: w(t) * mean over pixels of (x_hat - x0)^2, averaged over the batch
    (reduction='none' gives the (B,) per-sample losses).

    model_out is the output for x_t = training_target(x0, eps, t, ...)[0]; `params` is a
    PixelProcess, an AmbiguousConfig or a mapping (input_scale, logsnr_clamp, prediction,
    loss_weighting, ...). x_hat is the original's conversion of the output to x; its error is
    evaluated in the closed form that needs no x_t, x_hat - x0 = (sigma / alpha)(eps - out)
    for 'eps' and sigma (v - out) for 'v', which is the same quantity without the float32
    cancellation in (x_t - sigma out) / alpha where alpha is ~1e-4.
    """
    p = PixelProcess.of(params if params is not None else PixelProcess())
    if reduction not in ("mean", "none"):
        raise InvalidArgumentError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    t64 = torch.as_tensor(t).to(torch.float64)
    lam = p.logsnr(t64)
    a64, s64 = torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))
    if p.prediction == "x":
        err = model_out - x0
    elif p.prediction == "eps":
        err = _per_sample(s64 / a64, x0) * (eps - model_out)
    else:
        a, s = _per_sample(a64, x0), _per_sample(s64, x0)
        err = s * (v_from_x0_eps(x0, eps, a, s) - model_out)
    mse = err.square().flatten(1).mean(1)
    losses = loss_weight(lam, p.loss_weighting, p.sigmoid_bias).to(device=mse.device, dtype=mse.dtype) * mse
    return losses.mean() if reduction == "mean" else losses


# ---------------------------------------------------------------- step tables
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


def to_mask(x_hat):
    """The segmentation of a sampled x_hat: 1 where x_hat > 0 (uint8, numpy or torch)."""
    if _is_torch(x_hat):
        return (x_hat > 0).to(torch.uint8)
    return (np.asarray(x_hat) > 0).astype(np.uint8)
