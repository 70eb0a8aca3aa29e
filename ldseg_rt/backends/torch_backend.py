"""The PyTorch backend: runs the LDSeg modules eagerly, without gradients."""
from __future__ import annotations

import numpy as np
import torch

from ..models import LDSeg


class TorchBackend:
    name = "torch"

    def __init__(self, model: LDSeg, device: torch.device):
        self.device = device
        self.model = model.to(device).eval()

    def _run(self, network, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            return network(*inputs).float().cpu().numpy()

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self._run(self.model.image_encoder, images)

    def denoise(self, z_t: np.ndarray, z_i: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self._run(self.model.denoiser, z_t, z_i, t)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run(self.model.decoder, z)
