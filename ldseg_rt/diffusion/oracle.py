"""The float64 oracle: a slow, plain numpy sampler that every backend, the C++ loop and the
Triton step kernel are tested against. It draws the same Philox noise as the C++ loop."""
from __future__ import annotations

import numpy as np

from . import philox
from .constants import COLUMN, STREAM_INIT, STREAM_STEP
from .parameterization import eps_from_x0, to_x0_eps
from .renormalize import renormalize


def reference_step(z, out, row, prediction: str, clip: float = 0.0, noise=None):
    """One step of the table in float64: model output -> (x0, eps) -> z_prev."""
    _, a, s, c_x0, c_eps, c_z, sigma = row
    x0, eps = to_x0_eps(out, z, a, s, prediction)
    if clip > 0:
        x0 = np.clip(x0, -clip, clip)
        eps = eps_from_x0(z, x0, a, s)
    z_prev = c_x0 * x0 + c_eps * eps + c_z * z
    return z_prev + sigma * noise if sigma != 0 else z_prev


def _noise(seeds, samples, latent_shape, step, stream) -> np.ndarray:
    numel = int(np.prod(latent_shape))
    rows = [philox.normal(int(seed), k, step, stream, numel) for seed in seeds for k in samples]
    return np.stack(rows).reshape(len(seeds) * len(samples), *latent_shape)


def reference_sample(denoise, seeds, n: int, latent_shape, table: np.ndarray, prediction: str = "eps",
                     clip: float = 0.0, renorm: bool = True, first_sample: int = 0) -> np.ndarray:
    """Slow, plain float64 sampler with the same noise stream as the C++ loop.

    Batch rows are (image, sample) pairs, image-major, for samples first_sample ..
    first_sample + n - 1 of each image; `denoise(z float32, t float32)` is called once per
    step for the whole batch, as the C++ loop calls it.
    """
    samples = range(first_sample, first_sample + n)
    z = _noise(seeds, samples, latent_shape, 0, STREAM_INIT)
    if renorm:
        z = renormalize(z)
    for i, row in enumerate(np.asarray(table, np.float64)):
        t = np.full(len(z), row[COLUMN["t_model"]], np.float32)
        out = np.asarray(denoise(z.astype(np.float32), t), np.float64)
        noise = _noise(seeds, samples, latent_shape, i, STREAM_STEP) if row[COLUMN["sigma"]] != 0 else None
        z = reference_step(z, out, row, prediction, clip, noise)
        if renorm:
            z = renormalize(z)
    return z
