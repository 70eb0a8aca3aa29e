"""The face every backend has: the three inference networks on float32 numpy arrays (NCHW),
run by name, and the sampling loop. A backend says what it is (`name`, `precision`,
`device`, `config`) and implements `run`; one that can keep the whole loop on its device
overrides `sample_latents`."""
from __future__ import annotations

import numpy as np

from ..sampler import sample_latents
from ..sampling_plan import SamplingPlan

NETWORKS = ("image_encoder", "denoiser", "decoder")


class Backend:
    name: str
    precision: str

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.run("image_encoder", images)

    def denoise(self, z_t: np.ndarray, z_i: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.run("denoiser", z_t, z_i, t)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.run("decoder", z)

    def sample_latents(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan) -> np.ndarray:
        """The plan's loop for len(seeds) images x n samples: the C++ sampler, calling the
        denoiser once per step on the whole batch."""
        condition = np.repeat(z_i, n, axis=0)  # each image's condition for its n samples
        return sample_latents(lambda z_t, t: self.denoise(z_t, condition, t), seeds, n, plan.latent_shape,
                              plan.table, plan.prediction, plan.clip, plan.renormalize)
