"""The face every backend has: the three inference networks on float32 numpy arrays (NCHW),
run by name, and the sampling loop. A backend says what it is (`name`, `precision`,
`device`, `config`) and implements `run`; one that can keep the whole loop on its device
overrides `sample_latents`."""
from __future__ import annotations

import numpy as np

from ..diffusion.plan import SamplingPlan
from ..diffusion.sampler import sample_latents

NETWORKS = ("image_encoder", "denoiser", "decoder")
# Samples per decoder call on a CPU. ONNX Runtime, glas512 decoder, one thread: 0.45, 0.43
# and 0.45 s per sample at batch 1, 4 and 16, so a small batch costs nothing and keeps the
# decoder's working set (0.5 GB per 32-channel 512x512 activation at batch 16) small.
CPU_DECODE_BATCH = 4


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

    @property
    def decode_batch(self) -> int | None:
        """How many samples `Segmenter` decodes per call: a few on a CPU, all n (None) on a GPU."""
        return CPU_DECODE_BATCH if self.device.type == "cpu" else None

    def sample_latents(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan) -> np.ndarray:
        """The plan's loop for len(seeds) images x n samples: the C++ sampler, calling the
        denoiser once per step on the whole batch."""
        condition = np.repeat(z_i, n, axis=0)  # each image's condition for its n samples
        return sample_latents(lambda z_t, t: self.denoise(z_t, condition, t), seeds, n, plan.latent_shape,
                              plan.table, plan.prediction, plan.clip, plan.renormalize)
