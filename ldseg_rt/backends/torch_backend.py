"""The PyTorch backend: runs the LDSeg modules eagerly, without gradients."""
from __future__ import annotations

import numpy as np
import torch

from ..models import LDSeg
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    precision = "fp32"

    def __init__(self, model: LDSeg, device: torch.device):
        self.device = device
        self.model = model.to(device).eval()
        self.config = model.config

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            return getattr(self.model, network)(*inputs).float().cpu().numpy()
