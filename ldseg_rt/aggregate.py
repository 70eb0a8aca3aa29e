"""n samples' class probabilities -> per-sample class maps, mean probabilities, consensus
and normalised predictive entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels.aggregate import aggregate as aggregate_kernel
from .kernels.aggregate import aggregate_reference


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (n, C, h, w) probabilities; weights are
    convex, so each pixel still sums to 1."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False, antialias=True)


def aggregate(probs: torch.Tensor):
    """(n, C, H, W) per-sample probabilities -> samples (n, H, W) uint8, mean probs (C, H, W)
    float32, consensus mask (H, W) uint8, uncertainty (H, W) in [0, 1]: entropy / log C.
    On a GPU one Triton pass does it all; elsewhere its plain torch reference."""
    return (aggregate_kernel if probs.is_cuda else aggregate_reference)(probs)
