"""Keras-'same' transposed convolutions as one ONNX ConvTranspose with end padding.

The module computes the full transposed convolution and crops it to stride x the input,
which traces to ConvTranspose + Slice: a copy of the largest activation (16 x 32 x 512 x 512
floats at glas512's last decoder stage; 3% of the decoder's time in ONNX Runtime). ONNX's
ConvTranspose takes asymmetric pads, so the crop can be the operator's own: pads end = k - s.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import SameConvTranspose2d


class _CroppedConvTranspose(torch.autograd.Function):
    """conv_transpose2d cropped to stride x the input; exported as a single ConvTranspose."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int):
        h, w = x.shape[-2] * stride, x.shape[-1] * stride
        return F.conv_transpose2d(x, weight, bias, stride)[..., :h, :w]

    @staticmethod
    def symbolic(g, x, weight, bias, stride: int):
        k = weight.type().sizes()[-1]
        return g.op("ConvTranspose", x, weight, bias, strides_i=[stride, stride], kernel_shape_i=[k, k],
                    pads_i=[0, 0, k - stride, k - stride])


class CroppedConvTranspose2d(nn.Module):
    """What a SameConvTranspose2d computes, exported without the Slice."""

    def __init__(self, layer: SameConvTranspose2d):
        super().__init__()
        k, s = layer.kernel_size, layer.stride
        if k[0] != k[1] or s[0] != s[1] or k[0] < s[0] or layer.groups != 1 or layer.bias is None:
            raise ValueError(f"no single-ConvTranspose form for kernel {k}, stride {s}, groups {layer.groups}")
        self.stride = s[0]
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CroppedConvTranspose.apply(x, self.weight, self.bias, self.stride)


def with_cropped_conv_transposes(module: nn.Module) -> nn.Module:
    """A copy of module with every SameConvTranspose2d exported as CroppedConvTranspose2d."""
    if isinstance(module, SameConvTranspose2d):
        return CroppedConvTranspose2d(copy.deepcopy(module))
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SameConvTranspose2d):
                setattr(parent, name, CroppedConvTranspose2d(child))
    return module
