"""The K-step sampling loop kept on the model's device: the Triton step kernel draws the
Philox noise and does the step math (the same stream and table as the C++ sampler), the
denoiser runs in between, and nothing crosses to the host until the final latents.

On CUDA the whole loop is captured once per (batch, step table) in a CUDA graph and then
replayed: one launch per sampling call instead of hundreds of kernel launches from Python.
A graph's static inputs and output are shared by every caller, so copy-in, replay and
copy-out hold the loop's lock (threads sharing a backend take turns on the graph).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from ..diffusion.constants import COLUMN
from ..diffusion.plan import SamplingPlan
from ..kernels.diffusion_step import diffusion_step, initial_noise
from .precision import autocast, on_device

MAX_GRAPHS = 8  # captured loops kept, least recently used dropped


def _seed_words(seeds: list[int]) -> torch.Tensor:
    """uint64 seeds as the int64 bit patterns the kernel reads."""
    return torch.tensor([s - 2 ** 64 if s >= 2 ** 63 else s for s in seeds], dtype=torch.int64)


class DeviceLoop:
    def __init__(self, denoiser: torch.nn.Module, device: torch.device, precision: str, cuda_graphs: bool):
        self.denoiser = denoiser
        self.device, self.precision = device, precision
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def __call__(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan,
                 first_sample: int = 0) -> np.ndarray:
        """Latents (len(seeds) * n, *plan.latent_shape), image-major, samples first_sample ..
        first_sample + n - 1 of each image, like the C++ sampler's."""
        rows = len(seeds) * n
        condition = torch.from_numpy(np.repeat(z_i, n, axis=0)).to(self.device)
        row_seeds = _seed_words([s for s in seeds for _ in range(n)]).to(self.device)
        samples = torch.arange(first_sample, first_sample + n, dtype=torch.int64).repeat(len(seeds)).to(self.device)
        with torch.inference_mode(), on_device(self.device, self.precision):
            if not self.cuda_graphs:
                return self._loop(condition, row_seeds, samples, plan).cpu().numpy()
            return self._replay(condition, row_seeds, samples, plan, rows).cpu().numpy()

    def _loop(self, condition, seeds, samples, plan: SamplingPlan) -> torch.Tensor:
        z = initial_noise(seeds, samples, plan.latent_shape, plan.renormalize)
        for step, row in enumerate(plan.table):
            t = torch.full((z.shape[0],), float(row[COLUMN["t_model"]]), dtype=torch.float32, device=self.device)
            with autocast(self.device, self.precision):
                out = self.denoiser(z, condition, t)
            z = diffusion_step(z, out, seeds, samples, step, tuple(row), plan.prediction, plan.clip,
                               plan.renormalize)
        return z

    def _replay(self, condition, seeds, samples, plan: SamplingPlan, rows: int) -> torch.Tensor:
        key = (rows, plan.table.tobytes(), plan.prediction, plan.clip, plan.renormalize, plan.latent_shape)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = self._capture(condition, seeds, samples, plan)
                if len(self._graphs) > MAX_GRAPHS:
                    self._graphs.pop(next(iter(self._graphs)))
            graph, inputs, output = self._graphs.pop(key)
            self._graphs[key] = (graph, inputs, output)  # most recently used last
            for static, value in zip(inputs, (condition, seeds, samples)):
                static.copy_(value)
            graph.replay()
            return output.clone()

    def _capture(self, condition, seeds, samples, plan: SamplingPlan):
        inputs = (condition.clone(), seeds.clone(), samples.clone())
        # Warm-up on a side stream compiles the Triton kernels and lets cuDNN/cuBLAS pick their
        # algorithms and workspaces, none of which may happen during capture.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._loop(*inputs, plan)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe CUDA calls break the capture, not another
        # thread's work on another backend or model meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self._loop(*inputs, plan)
        return graph, inputs, output
