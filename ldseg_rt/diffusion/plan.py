"""What one sampling call runs, for either family: the step table, the parameterisation, x0
clipping, renormalisation and the shape of the state. The C++ sampler, the device loop and
the float64 oracle all take the same plan: one sampler, two parameterisations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pixel_schedule import pixel_table
from .tables import ldseg_table


@dataclass(frozen=True)
class SamplingPlan:
    table: np.ndarray  # (steps, 7) float64, constants.TABLE_COLUMNS
    prediction: str  # 'eps', 'x' or 'v'
    clip: float  # x0 clamped to [-clip, clip]; 0 disables it
    renormalize: bool  # LDSeg's per-sample renormalisation after every step
    latent_shape: tuple[int, ...]  # one sample's state (C, H, W)


def sampling_plan(cfg, steps: int, eta: float) -> SamplingPlan:
    """The plan of a model configuration: LDSeg's latent DDIM, or the pixel-space family's
    DDPM/DDIM over its input-scaled schedule."""
    if cfg.family == "ldseg":
        return SamplingPlan(ldseg_table(steps, eta, cfg.timesteps, cfg.cosine_s), "eps", 0.0, True, cfg.latent_shape)
    return SamplingPlan(pixel_table(cfg, steps, eta=eta), cfg.prediction, cfg.clip, False, cfg.latent_shape)
