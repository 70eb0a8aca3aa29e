"""Training loss of the pixel-space family (Christensen et al., as the original's
train_loss_step): t from `sample_t` (stratified uniform), eps ~ N(0, I), x_t from
`training_target`, loss = mean over the batch of w(t) * mean over pixels (x_hat - x0)^2,
where x_hat is the model output converted to x (`pixel_loss`). The weights w are functions
of the scaled, clamped SNR of ldseg_rt.diffusion.pixel_schedule.
"""
from __future__ import annotations

import operator

import torch

from ..diffusion.constants import PREDICTIONS
from ..diffusion.parameterization import v_from_x0_eps
from ..diffusion.pixel_schedule import (DEFAULT_CLAMP, DEFAULT_INPUT_SCALE, PixelProcess, alpha_sigma, as_float64,
                                        sigmoid, xp_of)
from ..errors import InvalidArgumentError

WEIGHTINGS = ("snr", "snr_plus1", "max_snr_1", "uniform", "sigmoid")
# The original code's names for the weightings (case-insensitive); 'sigmoid_K' there is sigmoid with k = K.
_WEIGHTING_ALIASES = {"snr_trunc": "max_snr_1", "snr+1": "snr_plus1"}


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
    lam = as_float64(logsnr_t)
    xp = xp_of(lam)
    if name == "uniform":
        return xp.ones_like(lam)
    if name == "sigmoid":
        return sigmoid(lam - k)
    snr = xp.exp(lam)
    if name == "snr":
        return snr
    if name == "snr_plus1":
        return snr + 1.0
    return xp.maximum(snr, xp.ones_like(snr))


def _weighting_of(params) -> tuple[str, float]:
    """(loss_weighting, sigmoid_bias) of a config, a mapping or a PixelProcess (the default,
    SNR + 1, where none is given)."""
    get = params.get if isinstance(params, dict) else lambda name, default: getattr(params, name, default)
    return _parse_weighting(get("loss_weighting", "snr_plus1"), get("sigmoid_bias", 0.0))


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
    params = params if params is not None else PixelProcess()
    p = PixelProcess.of(params)
    weighting, bias = _weighting_of(params)
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
    losses = loss_weight(lam, weighting, bias).to(device=mse.device, dtype=mse.dtype) * mse
    return losses.mean() if reduction == "mean" else losses
