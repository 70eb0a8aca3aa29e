"""Per-sample renormalisation to zero mean and unit (population) variance, as LDSeg applies
after every step; numpy for the float64 oracle, torch for the differentiable sampler and the
kernels' plain torch reference. The C++ loop and the Triton kernel do the same with the
same epsilon."""
from __future__ import annotations

import torch

from .constants import RENORM_EPS


def renormalize(z):
    """(z - mean) / (std + RENORM_EPS) over all axes but the first; numpy or torch, in z's dtype."""
    if isinstance(z, torch.Tensor):
        flat = z.reshape(z.shape[0], -1)
        mean = flat.mean(dim=1, keepdim=True)
        std = flat.std(dim=1, keepdim=True, correction=0)
        return ((flat - mean) / (std + RENORM_EPS)).reshape(z.shape)
    axes = tuple(range(1, z.ndim))
    return (z - z.mean(axis=axes, keepdims=True)) / (z.std(axis=axes, keepdims=True) + RENORM_EPS)
