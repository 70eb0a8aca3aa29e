"""The modules made ready for the GPU: the Triton kernels in place of attention and
GroupNorm(+SiLU), on a copy in the requested precision (backends/precision.py); the Triton
kernels take fp32, fp16 or bf16 and keep their own statistics and accumulators in fp32."""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.attention import attention
from ..kernels.groupnorm import group_norm
from ..models.layers import GroupNormSiLU
from .precision import cast_model


class TritonGroupNorm(nn.Module):
    """A GroupNorm (or GroupNormSiLU) run by the fused Triton kernel, with its parameters."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.silu = isinstance(norm, GroupNormSiLU)
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.groups, self.weight, self.bias, self.eps, silu=self.silu)


def gpu_model(model: nn.Module, device: torch.device, precision: str, kernels: bool) -> nn.Module:
    """A copy of `model` on `device` in `precision`, with the Triton kernels when `kernels`."""
    model = cast_model(model, device, precision)
    if kernels:
        for module in model.modules():
            if hasattr(module, "attend"):  # either family's attention layer
                module.attend = attention
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.GroupNorm):
                    setattr(parent, name, TritonGroupNorm(child))
    return model
