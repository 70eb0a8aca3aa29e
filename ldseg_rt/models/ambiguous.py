"""The pixel-space ambiguous-segmentation denoiser in PyTorch (Christensen
et al., SCIA 2025; original: JakobLC/AmbDiffSeg, models/unet.py `UNetModel`).

A U-Net maps the noisy mask x_t (one channel, x0 = 2m - 1), the image (concatenated after
x_t as the condition) and the continuous time t in [0, 1] to the model output: x_hat through
a tanh when the configuration predicts x (the original's `final_act: tanh_if_x`), eps or v
unsquashed otherwise.

Architecture, as the original builds it (amb128: base 32, multipliers 1,1,2,4, res blocks
1,2,3,4, 4 middle blocks, 4 heads at the lowest level only, dropout 0):

- Time: t itself (not scaled, not logSNR) -> sinusoidal features, `time_embed_dim` of them,
  frequencies exp(-ln(max_period) k / half) for k < half, cos first then sin -> Linear
  (time_dim), SiLU, Linear (time_dim).
- Norms: GroupNorm(eps 1e-5) with `norm_groups` groups, or one group per channel where the
  width is not divisible by it (the original's `normalization`: 32, else per channel).
- Res block: GN, SiLU, conv3; + Linear(SiLU(temb)) per channel; GN, SiLU, dropout, conv3
  (zero init); + the input (a 1x1 conv where the widths differ).
- Attention: GN, 1x1 conv to q, k, v laid out head-major ([q, k, v] of head 0, then head 1,
  ...: the original's legacy QKV layout), softmax(q k^T / sqrt(d)) v per head, 1x1
  projection (zero init), + the un-normalised input.
- Encoder: conv3 stem to base channels; per level its res blocks (each followed by attention
  on an attention level), then a stride-2 conv3 (padding 1) except at the last level. Every
  stem, block and downsample output is kept as a skip.
- Middle: `num_middle_blocks` res blocks at the lowest width, with attention between
  consecutive ones when the lowest level has attention (R A R A R A R for amb128).
- Decoder: per level from the lowest, res blocks + 1 blocks, each on [x, skip] concatenated
  (then attention on an attention level); after the last block of each level but the top,
  nearest x2 upsampling and conv3.
- Head: GN, SiLU, conv3 to one channel (zero init), tanh when predicting x.

Every other weight has PyTorch's default initialisation, as in the original; with the zero
inits the output of a fresh model is exactly 0 (tanh(0) = 0). Modules are built in the
original's order, so under the same torch seed a fresh model draws the original's weights.

Parameters: amb128 has 6,891,329, the paper's "about 6.9M" (6.89M). The original's module
built from its default config has 6,891,905: its LIDC slices are grayscale repeated to 3
channels (then normalised per channel), so its stem sees 1 + 3 channels where ours sees
1 + in_channels = 2; the difference is exactly the stem's 2 x 32 x 9 = 576 weights, and a
1-channel stem spans the same functions of a repeated grayscale image. With in_channels=3
the counts are equal, the parameters come in the same order with the same shapes (the
original's 1-D attention convs as 1x1 2-D ones), and with the original's weights loaded the
outputs agree to 5e-7.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import AmbiguousConfig
from ..errors import ConfigError
from .layers import GroupNormSiLU

NORM_EPS = 1e-5  # PyTorch's GroupNorm default, which the original uses


def group_norm(channels: int, groups: int, silu: bool = False) -> nn.GroupNorm:
    """`groups` groups, or one per channel when `channels` is not divisible by it."""
    groups = groups if channels % groups == 0 else channels
    return (GroupNormSiLU if silu else nn.GroupNorm)(groups, channels, eps=NORM_EPS)


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SinusoidalEmbedding(nn.Module):
    """t (B,) -> (B, dim): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / half), k < half;
    an odd dim gets a trailing zero."""

    def __init__(self, dim: int, max_period: float):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(max_period) / half))
        self.register_buffer("freqs", freqs, persistent=False)
        self.pad = dim % 2

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return F.pad(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1), (0, self.pad))


class ResBlock(nn.Module):
    """GN, SiLU, conv3, + Linear(SiLU(temb)); GN, SiLU, dropout, conv3 (zero init); + the
    input (1x1 conv when the widths differ)."""

    def __init__(self, cin: int, cout: int, cfg: AmbiguousConfig):
        super().__init__()
        self.norm1 = group_norm(cin, cfg.norm_groups, silu=True)
        self.conv1 = conv3(cin, cout)
        self.time_proj = nn.Linear(cfg.time_dim, cout)
        self.norm2 = group_norm(cout, cfg.norm_groups, silu=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = zero_init(conv3(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x)) + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.norm2(h)))
        return self.skip(x) + h


class MultiHeadAttention(nn.Module):
    """GN, 1x1 conv to q, k, v (head-major: [q_h, k_h, v_h] for h = 0, 1, ...), softmax(q k^T
    d^-0.5) v per head, 1x1 projection (zero init), + the un-normalised input."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        # softmax(q k^T scale) v over (B, heads, T, d); a backend may put a fused kernel here.
        self.attend = F.scaled_dot_product_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, self.heads, 3, d, h * w).transpose(-2, -1)
        q, k, v = qkv.unbind(2)  # (B, heads, T, d) each
        attended = self.attend(q, k, v, scale=d ** -0.5)
        return x + self.proj(attended.transpose(-2, -1).reshape(b, c, h, w))


class Block(nn.Module):
    """A res block, then attention on attention levels, then (decoder) x2 upsampling."""

    def __init__(self, cin: int, cout: int, cfg: AmbiguousConfig, attention: bool, upsample: bool = False):
        super().__init__()
        self.res = ResBlock(cin, cout, cfg)
        self.attention = MultiHeadAttention(cout, cfg.heads, cfg.norm_groups) if attention else nn.Identity()
        self.upsample = Upsample(cout) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.attention(self.res(x, temb)))


class Downsample(nn.Module):
    """Stride-2 conv3 with padding 1. Takes (x, temb) like a Block, so that the encoder is one
    list of steps; temb is unused."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Sequential):
    """Nearest-neighbour x2, then conv3."""

    def __init__(self, channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv3(channels, channels))


class AmbiguousUNet(nn.Module):
    """(x_t (B, 1, S, S), image (B, in_channels, S, S), t (B,) in [0, 1]) -> the model output
    (B, 1, S, S): x_hat in (-1, 1) for prediction 'x', else eps or v."""

    def __init__(self, cfg: AmbiguousConfig):
        super().__init__()
        self.config = cfg
        levels = len(cfg.channel_mults)
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        attention = [level in {a % levels for a in cfg.attention_levels} for level in range(levels)]
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(cfg.time_embed_dim, cfg.time_max_period),
                                      nn.Linear(cfg.time_embed_dim, cfg.time_dim), nn.SiLU(),
                                      nn.Linear(cfg.time_dim, cfg.time_dim))
        self.stem = conv3(1 + cfg.in_channels, cfg.base_channels)

        channels, skip_channels = cfg.base_channels, [cfg.base_channels]
        self.encoder = nn.ModuleList()
        for level, (width, blocks) in enumerate(zip(widths, cfg.num_res_blocks)):
            for _ in range(blocks):
                self.encoder.append(Block(channels, width, cfg, attention[level]))
                channels = width
                skip_channels.append(channels)
            if level < levels - 1:
                self.encoder.append(Downsample(channels))
                skip_channels.append(channels)

        self.middle = nn.ModuleList([
            Block(channels, channels, cfg, attention[-1] and i < cfg.num_middle_blocks - 1)
            for i in range(cfg.num_middle_blocks)])

        self.decoder = nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = cfg.num_res_blocks[level] + 1
            for i in range(blocks):
                self.decoder.append(Block(channels + skip_channels.pop(), widths[level], cfg, attention[level],
                                          upsample=level > 0 and i == blocks - 1))
                channels = widths[level]

        self.out_norm = group_norm(channels, cfg.norm_groups, silu=True)
        self.out_conv = zero_init(conv3(channels, 1))
        self.out_tanh = cfg.prediction == "x"

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(t)
        x = self.stem(torch.cat([x_t, image], dim=1))
        skips = [x]
        for step in self.encoder:
            x = step(x, temb)
            skips.append(x)
        for block in self.middle:
            x = block(x, temb)
        for block in self.decoder:
            x = block(torch.cat([x, skips.pop()], dim=1), temb)
        out = self.out_conv(self.out_norm(x))
        return torch.tanh(out) if self.out_tanh else out

    @classmethod
    def from_config(cls, cfg: AmbiguousConfig, seed: int = 0) -> "AmbiguousUNet":
        """Random weights with PyTorch's default initialisers (and the original's zero inits),
        reproducibly for a seed, without touching the caller's global torch RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg).eval()


class MaskProbabilities(nn.Module):
    """x_hat -> (background, foreground) probabilities of the mask x_hat > 0: one-hot, as the
    paper thresholds each sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (x > 0).to(x.dtype)
        return torch.cat([1 - foreground, foreground], dim=1)


class ImageNormalization(nn.Module):
    """(image - mean) / std per channel. Constant buffers, not weights (not in the state dict)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class AmbiguousModel(nn.Module):
    """The family's inference networks in the shape every backend runs: the image is its own
    condition (image_encoder is the identity, or the configuration's normalisation), the U-Net
    denoises the mask, the decoder thresholds it."""

    def __init__(self, cfg: AmbiguousConfig):
        super().__init__()
        self.config = cfg
        self.image_encoder = ImageNormalization(cfg.image_mean, cfg.image_std) if cfg.image_mean else nn.Identity()
        self.denoiser = AmbiguousUNet(cfg)
        self.decoder = MaskProbabilities()

    @classmethod
    def from_config(cls, cfg: AmbiguousConfig, seed: int = 0) -> "AmbiguousModel":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg).eval()
