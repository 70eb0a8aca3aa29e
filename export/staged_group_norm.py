"""GroupNorm for exported graphs: its statistics reduced one axis at a time.

onnxruntime's float32 reductions over millions of values are inexact: knee3d's image encoder,
whose first groups hold 4.2M values, came out 1.2e-4 (relative) from the official float64
output through onnxruntime, against 1.6e-6 in torch, and random inputs showed 1.8e-3. Reducing
over the last axis, then the next, and so on (no run longer than one axis of the map) brings
the exported encoder to 6.5e-7. Groups of fewer than STAGED_FROM values keep the plain
operator, which is exact enough there and which TensorRT maps to one normalisation layer.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import GroupNormSiLU

STAGED_FROM = 2 ** 16  # values per group


class StagedGroupNorm(nn.Module):
    """nn.GroupNorm (and GroupNormSiLU) with mean and variance reduced axis by axis."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm, self.silu = norm, isinstance(norm, GroupNormSiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, G, C/G, *spatial), the batch read from x: unflatten would trace it as a constant
        grouped = x.reshape(x.shape[0], self.norm.num_groups, -1, *x.shape[2:])
        axes = range(grouped.dim() - 1, 1, -1)

        def mean(t: torch.Tensor) -> torch.Tensor:
            for axis in axes:
                t = t.mean(axis, keepdim=True)
            return t

        centred = grouped - mean(grouped)
        normed = (centred * torch.rsqrt(mean(centred * centred) + self.norm.eps)).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = normed * self.norm.weight.view(shape) + self.norm.bias.view(shape)
        return F.silu(out) if self.silu else out


def with_staged_group_norms(module: nn.Module, inputs: tuple) -> nn.Module:
    """A copy of module whose GroupNorms with groups of at least STAGED_FROM values on `inputs`
    (one example, batch first) reduce their statistics axis by axis. Which ones is decided by one
    eager pass, so that the traced graph holds no branch on a shape."""
    module = copy.deepcopy(module)
    large = []

    def note(norm, args):
        if args[0][0].numel() // norm.num_groups >= STAGED_FROM:
            large.append(norm)
    hooks = [m.register_forward_pre_hook(note) for m in module.modules() if isinstance(m, nn.GroupNorm)]
    try:
        with torch.no_grad():
            module.eval()(*(x[:1] for x in inputs))
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if any(child is norm for norm in large):
                setattr(parent, name, StagedGroupNorm(child))
    return module
