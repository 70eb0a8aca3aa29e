"""Keras-compatible building blocks for the LDSeg port, for images (NCHW) and volumes (NCDHW).

The original is TF/Keras; these modules reproduce its numerics in PyTorch: norm epsilon
1e-3, TF 'same' padding (asymmetric for stride 2 and even kernels), Conv2DTranspose 'same'
cropping, and Keras' VarianceScaling initialisers. Blocks that hold convolutions take `dims`
(2 or 3, the number of spatial axes); everything else works on any number of spatial axes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

KERAS_EPS = 1e-3  # Keras' default epsilon for BatchNorm, GroupNorm and LayerNorm
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 in PyTorch's convention
# The official code's kernel_init(s) is VarianceScaling(max(s, 1e-10)): its "zero" initialiser draws
# values of about 1e-6. The 2-D port uses exact zeros (scale 0, the default `zero_scale` below); the
# 3-D networks pass KERAS_MIN_SCALE.
KERAS_MIN_SCALE = 1e-10


def variance_scaling_(weight: torch.Tensor, scale: float, mode: str = "fan_avg") -> torch.Tensor:
    """Keras VarianceScaling(scale, mode, 'uniform'); scale 0 is Keras' zero init."""
    if scale == 0:
        return nn.init.zeros_(weight)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    fan = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
    limit = math.sqrt(3.0 * scale / fan)
    return nn.init.uniform_(weight, -limit, limit)


def glorot_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return variance_scaling_(weight, scale, "fan_avg")


def he_uniform_(weight: torch.Tensor) -> torch.Tensor:
    return variance_scaling_(weight, 2.0, "fan_in")


def _init(layer: nn.Module, init=glorot_) -> nn.Module:
    init(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class GroupNormSiLU(nn.GroupNorm):
    """GroupNorm then SiLU as one module, so that one fused kernel can stand in for both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(super().forward(x))


def group_norm(groups: int, channels: int, silu: bool = False) -> nn.GroupNorm:
    return (GroupNormSiLU if silu else nn.GroupNorm)(groups, channels, eps=KERAS_EPS)


def _by_dims(classes: tuple, dims: int):
    """The 2-D or 3-D one of a pair of classes."""
    if dims not in (2, 3):
        raise ConfigError(f"{dims} spatial dimensions: LDSeg has 2-D and 3-D networks only")
    return classes[dims - 2]


def batch_norm(channels: int, dims: int = 2) -> nn.BatchNorm2d | nn.BatchNorm3d:
    return _by_dims((nn.BatchNorm2d, nn.BatchNorm3d), dims)(channels, eps=KERAS_EPS, momentum=KERAS_BN_MOMENTUM)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after): the extra pixel goes after, e.g. (0, 1) for k3 s2."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv:
    """Conv2D / Conv3D(padding='same') as TF computes it, for any stride and kernel, grouped or not
    (contiguous channel groups, as both frameworks split them). Mixed into nn.Conv2d / nn.Conv3d."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, init=glorot_, groups: int = 1):
        # Stride 1 with an odd kernel pads symmetrically, which the conv can do itself.
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if symmetric else 0, groups=groups)
        self.needs_tf_pad = not symmetric
        _init(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_tf_pad:
            pad = []  # F.pad lists the last axis first
            for size, k, s in reversed(list(zip(x.shape[2:], self.kernel_size, self.stride))):
                pad += tf_same_padding(size, k, s)
            x = F.pad(x, pad)
        return super().forward(x)


class SameConv2d(_SameConv, nn.Conv2d):
    pass


class SameConv3d(_SameConv, nn.Conv3d):
    pass


def same_conv(cin: int, cout: int, kernel: int, stride: int = 1, init=glorot_, groups: int = 1,
              dims: int = 2) -> SameConv2d | SameConv3d:
    return _by_dims((SameConv2d, SameConv3d), dims)(cin, cout, kernel, stride, init, groups)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """Conv2DTranspose(padding='same'): the full transposed conv, cropped to stride x input."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 2):
        super().__init__(cin, cout, kernel, stride, padding=0)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1]
        return super().forward(x)[..., :h, :w]


def dense(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(cin, cout), lambda w: glorot_(w, scale))


class SelfAttention(nn.Module):
    """GroupNorm, q/k/v dense, softmax(q k^T d^-0.5) v per head over all positions (H*W or
    D*H*W tokens), dense projection.

    The two LDSeg networks differ in where the residual comes from: the image encoder adds
    the projection to its un-normalised input, the denoiser to the normalised one.
    """

    def __init__(self, channels: int, heads: int, groups: int, residual_from_normalized: bool,
                 zero_scale: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.residual_from_normalized = residual_from_normalized
        self.norm = group_norm(groups, channels)
        self.query = dense(channels, channels)
        self.key = dense(channels, channels)
        self.value = dense(channels, channels)
        self.proj = dense(channels, channels, scale=zero_scale)
        # softmax(q k^T scale) v over (B, heads, T, d); a backend may put a fused kernel here.
        self.attend = F.scaled_dot_product_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        positions = math.prod(spatial)
        normed = self.norm(x)
        tokens = normed.flatten(2).transpose(1, 2)  # (B, T, C)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, positions, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = (split_heads(f(tokens)) for f in (self.query, self.key, self.value))
        attended = self.attend(q, k, v, scale=(c // self.heads) ** -0.5)
        out = self.proj(attended.transpose(1, 2).reshape(b, positions, c))
        out = out.transpose(1, 2).reshape(b, c, *spatial)
        return (normed if self.residual_from_normalized else x) + out


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding: dim/2 frequencies exp(-k ln(1e4) / (dim/2 - 1)), [sin, cos]."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        # float32 throughout, as TF computes them: matches Keras to the last place.
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(1e4) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ConvBlock(nn.Module):
    """Image-encoder block: 1x1 residual; SiLU, conv3, dropout, SiLU, conv3 (zero init);
    add; SiLU; downsample; GroupNorm. The 2-D original downsamples with a stride-2 conv3; the
    3-D one groups both conv3s (`conv_groups`) and max-pools (`max_pool`)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float, dims: int = 2, conv_groups: int = 1,
                 max_pool: bool = False, zero_scale: float = 0.0):
        super().__init__()
        self.residual = same_conv(cin, cout, 1, dims=dims)
        self.conv1 = same_conv(cin, cout, 3, groups=conv_groups, dims=dims)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = same_conv(cout, cout, 3, init=lambda w: glorot_(w, zero_scale), groups=conv_groups, dims=dims)
        self.down = (_by_dims((nn.MaxPool2d, nn.MaxPool3d), dims)(2) if max_pool
                     else same_conv(cout, cout, 3, stride=2, dims=dims))
        self.norm = group_norm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.conv1(F.silu(x)))
        h = F.silu(self.conv2(F.silu(h)) + self.residual(x))
        return self.norm(self.down(h))


class ResConvBlock(nn.Module):
    """Label encoder/decoder block: conv3, BN, SiLU, conv3, BN, dropout; 1x1 conv + BN
    shortcut; add; SiLU."""

    def __init__(self, cin: int, cout: int, dropout: float, dims: int = 2):
        super().__init__()
        self.conv1 = same_conv(cin, cout, 3, init=he_uniform_, dims=dims)
        self.bn1 = batch_norm(cout, dims)
        self.conv2 = same_conv(cout, cout, 3, init=he_uniform_, dims=dims)
        self.bn2 = batch_norm(cout, dims)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = same_conv(cin, cout, 1, dims=dims)
        self.bn_shortcut = batch_norm(cout, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.conv1(x)))
        h = self.dropout(self.bn2(self.conv2(h)))
        return F.silu(self.bn_shortcut(self.shortcut(x)) + h)


class ResidualBlock(nn.Module):
    """Denoiser block: GN, SiLU, conv3, + Dense(SiLU(temb)), GN, SiLU, conv3 (zero init),
    + residual (1x1 conv when the widths differ)."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int, dims: int = 2, zero_scale: float = 0.0):
        super().__init__()
        self.residual = same_conv(cin, cout, 1, dims=dims) if cin != cout else nn.Identity()
        self.time_proj = dense(time_dim, cout)
        self.norm1 = group_norm(groups, cin, silu=True)
        self.conv1 = same_conv(cin, cout, 3, dims=dims)
        self.norm2 = group_norm(groups, cout, silu=True)
        self.conv2 = same_conv(cout, cout, 3, init=lambda w: glorot_(w, zero_scale), dims=dims)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        h = h + self.time_proj(F.silu(temb))[(...,) + (None,) * (h.dim() - 2)]  # broadcast over the positions
        h = self.conv2(self.norm2(h))
        return h + self.residual(x)


class ResAttention(nn.Module):
    """A denoiser residual block, followed by self-attention (1 head, residual from the normalised
    input) on levels that have it."""

    def __init__(self, cin: int, cout: int, attention: bool, cfg, dims: int = 2, zero_scale: float = 0.0):
        super().__init__()
        self.res = ResidualBlock(cin, cout, cfg.time_dim, cfg.norm_groups, dims, zero_scale)
        self.attention = (SelfAttention(cout, 1, cfg.norm_groups, residual_from_normalized=True,
                                        zero_scale=zero_scale)
                          if attention else nn.Identity())

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attention(self.res(x, temb))


class Upsample(nn.Sequential):
    """Nearest-neighbour x2 (Keras UpSampling), then conv3 (to `cout` channels, by default as many as in)."""

    def __init__(self, channels: int, cout: int | None = None, dims: int = 2):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         same_conv(channels, cout or channels, 3, dims=dims))
