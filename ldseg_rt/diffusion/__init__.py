"""Diffusion math shared by both families: the constants every sampler agrees on
(constants), LDSeg's schedule (schedules) and the pixel family's (pixel_schedule), the
parameterisations, the step tables every sampler runs, the per-sample renormalisation, the
C++ batched loop (sampler), the plan a sampling call runs (plan), and the float64 numpy
oracle with its own Philox (oracle, philox)."""
from .constants import COLUMN, PREDICTIONS, RENORM_EPS, STREAM_INIT, STREAM_STEP, TABLE_COLUMNS
from .oracle import reference_sample, reference_step
from .parameterization import eps_from_x0, to_x0_eps, v_from_x0_eps
from .plan import SamplingPlan, sampling_plan
from .renormalize import renormalize
from .sampler import sample_latents
from .schedules import cosine_alpha_bar, ldseg_timesteps
from .tables import ddim_table, ddpm_table, ldseg_table

__all__ = ["COLUMN", "PREDICTIONS", "RENORM_EPS", "STREAM_INIT", "STREAM_STEP", "TABLE_COLUMNS", "SamplingPlan",
           "cosine_alpha_bar", "ddim_table", "ddpm_table", "eps_from_x0", "ldseg_table", "ldseg_timesteps",
           "reference_sample", "reference_step", "renormalize", "sample_latents", "sampling_plan", "to_x0_eps",
           "v_from_x0_eps"]
