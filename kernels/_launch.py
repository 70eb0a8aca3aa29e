"""Where a Triton kernel can run: on a CUDA tensor, or anywhere under the interpreter
(TRITON_INTERPRET=1, read by triton when a kernel is defined, so set it before importing)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_launch(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels can take these tensors: all on one CUDA device, or all on
    the CPU under the interpreter."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return False
    device = devices.pop()
    return device.type == "cuda" or (device.type == "cpu" and interpreting())
