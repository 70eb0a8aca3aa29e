"""The batched sampling loop: a thin Python face on the C++ implementation (ldseg_rt._C).

The loop draws Philox noise keyed by (seed, sample, step, element), calls `denoise(z, t)`
once per step for all images x n samples, and applies a step table from
ldseg_rt.diffusion.tables. `ldseg_rt.diffusion.oracle.reference_sample` is its float64 oracle.
"""
from __future__ import annotations

import numpy as np

from .. import _C
from ..errors import InvalidArgumentError
from .constants import PREDICTIONS, TABLE_COLUMNS


def sample_latents(denoise, seeds, n: int, latent_shape, table: np.ndarray, prediction: str = "eps",
                   clip: float = 0.0, renormalize: bool = True, threads: int = 0,
                   first_sample: int = 0) -> np.ndarray:
    """Run the table's steps for len(seeds) images x n samples (samples first_sample ..
    first_sample + n - 1 of each); returns float32 latents (len(seeds) * n, C, H, W), image-major."""
    if prediction not in PREDICTIONS:
        raise InvalidArgumentError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
    table = np.ascontiguousarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(TABLE_COLUMNS):
        raise InvalidArgumentError(f"step table must have shape (steps, {len(TABLE_COLUMNS)}), got {table.shape}")
    return _C.sample(denoise=denoise, seeds=np.asarray(seeds, dtype=np.uint64), n=int(n),
                     latent_shape=tuple(int(d) for d in latent_shape), table=table,
                     prediction=prediction, clip=float(clip), renormalize=bool(renormalize),
                     threads=int(threads), first_sample=int(first_sample))
