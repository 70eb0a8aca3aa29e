"""n samples' class probabilities -> per-sample class maps, mean probabilities, consensus
and normalised predictive entropy."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (n, C, h, w) probabilities; weights are
    convex, so each pixel still sums to 1."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False, antialias=True)


def aggregate(probs: torch.Tensor):
    """(n, C, H, W) per-sample probabilities -> samples (n, H, W) uint8, mean probs (C, H, W)
    float32, consensus mask (H, W) uint8, uncertainty (H, W) in [0, 1]: entropy / log C.
    On a GPU one Triton pass does it all (imported only then: the CPU needs no triton)."""
    if probs.is_cuda:
        from .kernels.aggregate import aggregate as fused
        return fused(probs)
    probs = probs.float()
    samples = probs.argmax(dim=1).to(torch.uint8)
    mean = probs.mean(dim=0)
    mask = mean.argmax(dim=0).to(torch.uint8)
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)
    uncertainty = (entropy / math.log(probs.shape[1])).clamp(0.0, 1.0)
    return samples, mean, mask, uncertainty
