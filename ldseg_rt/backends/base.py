"""The face every backend has: the three inference networks on float32 numpy arrays (NCHW),
run by name, and the sampling loop. A backend says what it is (`name`, `precision`,
`device`, `config`) and implements `run`; one that can keep the whole loop on its device
overrides `sample_latents`."""
from __future__ import annotations

import numpy as np
import torch

from ..diffusion.plan import SamplingPlan
from ..diffusion.sampler import sample_latents

NETWORKS = ("image_encoder", "denoiser", "decoder")
# Samples per decoder call on a CPU: the time per sample hardly depends on the batch there
# (benchmarks/RESULTS.md, "CPU speed"), so a small batch costs nothing and keeps the decoder's
# working set (a 32-channel 512x512 activation per sample) small.
CPU_DECODE_BATCH = 4
# Rows per denoiser call on a CPU for the pixel-space family, whose U-Net works at the image's
# size: per sample it is slower at batch 16 than at 1 or 4 on every backend. LDSeg's denoiser on
# small latents is fastest at the largest batch, so it takes every row at once (section
# speed/denoiser_batch of benchmarks/RESULTS.md).
CPU_PIXEL_DENOISE_BATCH = 4
# A volume's decoder works on millions of voxels per sample (a 32-channel activation of a
# 128x128x256 knee volume holds 4 bytes x 32 x 4M): fewer samples per call, so that a call stays within about
# what CPU_DECODE_BATCH 512x512 images take on a CPU, and 16 of them on a GPU.
CPU_DECODE_VOXELS = CPU_DECODE_BATCH * 512 * 512
GPU_DECODE_VOXELS = 16 * 512 * 512


class Backend:
    name: str
    precision: str

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.run("image_encoder", images)

    def denoise(self, z_t: np.ndarray, z_i: np.ndarray, t: np.ndarray) -> np.ndarray:
        batch = self.denoise_batch
        if batch is None or len(z_t) <= batch:
            return self.run("denoiser", z_t, z_i, t)
        return np.concatenate([self.run("denoiser", z_t[s:s + batch], z_i[s:s + batch], t[s:s + batch])
                               for s in range(0, len(z_t), batch)])

    @property
    def denoise_batch(self) -> int | None:
        """Rows per denoiser call: all of them (None), except the pixel-space U-Net on a CPU."""
        on_cpu = self.device.type == "cpu"
        return CPU_PIXEL_DENOISE_BATCH if on_cpu and self.config.family == "ambiguous" else None

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.run("decoder", z)

    def decode_tensor(self, z: np.ndarray) -> torch.Tensor:
        """decode() as a torch tensor: on the CPU here; the torch backend on CUDA leaves it on
        the GPU, where Segmenter's aggregation then runs (in the Triton kernel)."""
        return torch.from_numpy(self.decode(z))

    @property
    def decode_batch(self) -> int | None:
        """How many samples `Segmenter` decodes per call: a few on a CPU, all n (None) on a GPU;
        fewer for large volumes."""
        voxels = int(np.prod(self.config.image_shape))
        if self.device.type == "cpu":
            return max(1, min(CPU_DECODE_BATCH, CPU_DECODE_VOXELS // voxels))
        return None if voxels <= GPU_DECODE_VOXELS // 16 else max(1, GPU_DECODE_VOXELS // voxels)

    def sample_latents(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan,
                       first_sample: int = 0) -> np.ndarray:
        """The plan's loop for len(seeds) images x n samples (samples first_sample .. first_sample + n - 1
        of each): the C++ sampler, calling the denoiser once per step on the whole batch."""
        condition = np.repeat(z_i, n, axis=0)  # each image's condition for its n samples
        # The step math on as many threads as the networks use, not on every core of the machine:
        # the thread setting (and the process's CPU affinity, which torch follows) is the user's.
        return sample_latents(lambda z_t, t: self.denoise(z_t, condition, t), seeds, n, plan.latent_shape,
                              plan.table, plan.prediction, plan.clip, plan.renormalize, torch.get_num_threads(),
                              first_sample)
