"""The PyTorch backend: the model's modules (either family), without gradients.

On the CPU they run eagerly on a channels_last copy in fp32, or in bf16 on CPUs with
AVX-512 bf16 (norms in fp32), and the C++ sampler drives the loop. On CUDA
the Triton kernels replace attention and GroupNorm+SiLU, the step math and noise run in the
Triton step kernel, the K-step loop is captured in one CUDA graph, and fp16/bf16 weights are
available with the norms in fp32; every run is on the backend's device as the current one and,
in fp32, without TF32 (precision.run_context). `kernels=False` and `cuda_graphs=False` turn
the kernels and graphs off, for comparison.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..diffusion.plan import SamplingPlan
from .base import Backend
from .precision import cast_model, check_precision, run_context, to_channels_last


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str = "fp32", kernels: bool | None = None,
                 cuda_graphs: bool | None = None):
        """kernels, cuda_graphs: None means on CUDA, off elsewhere (kernels=True also works on
        the CPU under TRITON_INTERPRET=1, which is how the tests check this path)."""
        on_gpu = device.type == "cuda"
        check_precision(precision, device)
        self.device, self.precision, self.config = device, precision, model.config
        self.kernels = on_gpu if kernels is None else kernels
        self.loop = None
        if on_gpu or self.kernels:
            from .device_loop import DeviceLoop
            from .gpu_model import gpu_model
            self.model = gpu_model(model, device, precision, self.kernels)
            self.loop = DeviceLoop(self.model.denoiser, device, precision, on_gpu if cuda_graphs is None else cuda_graphs)
        else:
            self.model = cast_model(model, device, precision)
            to_channels_last(self.model, everything=precision != "fp32")

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        return self._forward(network, *arrays).float().cpu().numpy()

    def decode_tensor(self, z: np.ndarray) -> torch.Tensor:
        """The decoder's float32 probabilities, left on the GPU on CUDA: sample() aggregates them
        there, in the Triton kernel (pipeline/aggregate.py), and copies back only the results.
        On the CPU, decode() like every backend."""
        if self.device.type != "cuda":
            return super().decode_tensor(z)
        return self._forward("decoder", z).float()

    def _forward(self, network: str, *arrays: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), run_context(self.device, self.precision):
            inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            return getattr(self.model, network)(*inputs)

    def sample_latents(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan,
                       first_sample: int = 0) -> np.ndarray:
        if self.loop is None:
            return super().sample_latents(z_i, seeds, n, plan, first_sample)
        return self.loop(z_i, seeds, n, plan, first_sample)
