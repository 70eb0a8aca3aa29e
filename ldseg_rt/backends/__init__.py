"""Backends run the three inference networks; the Segmenter drives them.

Every backend has the same face, on float32 numpy arrays (NCHW):
    encode(images) -> z_i        denoise(z_t, z_i, t) -> model output        decode(z) -> probs
"""
from __future__ import annotations

import torch

from ..errors import BackendError, DeviceError

BACKENDS = ("torch",)
PRECISIONS = ("auto", "fp32")


def resolve_device(device) -> torch.device:
    """'auto' is CUDA when present, else the CPU; asking for a missing GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was requested but no CUDA GPU is available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) present")
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device type {resolved.type!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def create_backend(name: str, model, device, precision: str = "auto"):
    """Build the named backend ('auto' picks the best available one) for an LDSeg model."""
    if name not in BACKENDS + ("auto",):
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(('auto',) + BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r} is not supported; available: {', '.join(PRECISIONS)}")
    from .torch_backend import TorchBackend
    return TorchBackend(model, resolve_device(device))
