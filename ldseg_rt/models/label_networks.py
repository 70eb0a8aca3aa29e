"""What LDSeg's label encoder and label decoder compute, in 2-D and 3-D alike: the dimension
and the official layers differ (ldseg, ldseg3d build them), the way through them does not."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import KERAS_EPS


class LabelEncoding(nn.Module):
    """Label map, class ids as floats -> label latent z_l: blocks, a conv to the latent's channels,
    then Keras' LayerNormalization over the whole latent (statistics and affine over C and space)."""

    def __init__(self, latent_shape: tuple, blocks: nn.Module, to_latent: nn.Module):
        super().__init__()
        self.blocks, self.to_latent = blocks, to_latent
        self.norm = nn.LayerNorm(latent_shape, eps=KERAS_EPS)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_latent(self.blocks(label)))


class LabelDecoding(nn.Module):
    """Latent -> class probabilities: upsampling stages, SiLU, a 1x1 conv to the classes and a
    BatchNorm give the logits; softmax over the classes."""

    def __init__(self, stages: nn.Module, to_classes: nn.Module, norm: nn.Module):
        super().__init__()
        self.stages, self.to_classes, self.norm = stages, to_classes, norm

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_classes(F.silu(self.stages(z))))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(z), dim=1)
