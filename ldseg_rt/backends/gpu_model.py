"""The LDSeg modules made ready for the GPU: the Triton kernels in place of attention and
GroupNorm(+SiLU), and fp16/bf16 weights with the norms and the time embedding kept in fp32.

The caller's model is never changed: this works on a copy. Reduced precision runs under
torch.autocast, which feeds each layer in the dtype it wants (norms in fp32, matmuls and
convolutions in fp16/bf16); the Triton kernels take any of those dtypes and keep their own
statistics and accumulators in fp32.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..kernels.attention import attention
from ..kernels.groupnorm import group_norm
from ..models.layers import GroupNormSiLU, TimeEmbedding

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_MODULES = (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm, TimeEmbedding)


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
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(DTYPES)}")
    model = copy.deepcopy(model).to(device).eval()
    for module in model.modules():
        if not isinstance(module, FP32_MODULES):  # their weights and buffers stay fp32
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(DTYPES[precision])
        if kernels and hasattr(module, "attend"):  # either family's attention layer
            module.attend = attention
    if kernels:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.GroupNorm):
                    setattr(parent, name, TritonGroupNorm(child))
    return model


def autocast(device: torch.device, precision: str):
    """The context the copy runs under: autocast to the precision, or nothing for fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32", cache_enabled=False)
