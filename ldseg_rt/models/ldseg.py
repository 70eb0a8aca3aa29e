"""LDSeg's four networks in PyTorch (Zaman et al.).

Inference uses the image encoder E (image -> condition latent z_i), the denoiser D
(eps from [z_t, z_i] and t) and the label decoder G (latent -> class probabilities); the
label encoder (label map -> latent) is used only in training. The networks here are the 2-D ones
(NCHW); LDSeg builds the 3-D ones of ldseg3d (NCDHW) for a volume configuration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import LDSegConfig
from .label_networks import LabelDecoding, LabelEncoding
from .layers import (ConvBlock, ResAttention, ResConvBlock, SameConv2d, SameConvTranspose2d, SelfAttention,
                     TimeEmbedding, Upsample, batch_norm, dense, glorot_, group_norm)
from .ldseg3d import Denoiser3D, ImageEncoder3D, LabelDecoder3D, LabelEncoder3D


class ImageEncoder(nn.Module):
    """Image (B, in_channels, S, S) in [0, 1] -> condition latent z_i (B, latent_channels, s, s)."""

    def __init__(self, cfg: LDSegConfig):
        super().__init__()
        self.stem = SameConv2d(cfg.in_channels, cfg.image_encoder_stem, 3)
        blocks, channels = [], cfg.image_encoder_stem
        for width, attention in zip(cfg.image_encoder_widths, cfg.image_encoder_attention):
            blocks.append(ConvBlock(channels, width, cfg.image_encoder_groups, cfg.dropout))
            if attention:
                blocks.append(SelfAttention(width, cfg.image_encoder_heads, cfg.attention_groups,
                                            residual_from_normalized=False))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.to_latent = SameConv2d(channels, cfg.latent_channels, 1, init=lambda w: glorot_(w, 0.0))
        self.latent_attention = SelfAttention(cfg.latent_channels, cfg.latent_channels, 1,
                                              residual_from_normalized=False)
        self.norm = batch_norm(cfg.latent_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.to_latent(self.blocks(self.stem(image)))
        return self.norm(F.silu(self.latent_attention(h)))


class LabelEncoder(LabelEncoding):
    """Label map (B, 1, S, S), class ids as floats -> label latent z_l, layer-normalised."""

    def __init__(self, cfg: LDSegConfig):
        blocks, channels = [], 1
        for i, width in enumerate(cfg.label_encoder_widths):
            if i:
                blocks.append(nn.MaxPool2d(2))
            blocks.append(ResConvBlock(channels, width, cfg.dropout))
            channels = width
        super().__init__(cfg.latent_shape, nn.Sequential(*blocks), SameConv2d(channels, cfg.latent_channels, 1))


class LabelDecoder(LabelDecoding):
    """Latent (B, latent_channels, s, s) -> class probabilities (B, num_classes, S, S)."""

    def __init__(self, cfg: LDSegConfig):
        stages, channels = [], cfg.latent_channels
        for width in cfg.decoder_widths:
            stages += [SameConvTranspose2d(channels, width), ResConvBlock(width, width, cfg.dropout)]
            channels = width
        super().__init__(nn.Sequential(*stages), SameConv2d(channels, cfg.num_classes, 1), batch_norm(cfg.num_classes))


class Denoiser(nn.Module):
    """U-Net on the latent: (z_t, z_i, t) -> predicted noise eps, shaped like z_t."""

    def __init__(self, cfg: LDSegConfig):
        super().__init__()
        widths, blocks = cfg.denoiser_widths, cfg.num_res_blocks
        self.stem = SameConv2d(2 * cfg.latent_channels, cfg.denoiser_stem, 3)
        self.time_embedding = TimeEmbedding(cfg.time_dim)
        self.time_mlp = nn.Sequential(dense(cfg.time_dim, cfg.time_dim), nn.SiLU(),
                                      dense(cfg.time_dim, cfg.time_dim))

        channels, skip_channels = cfg.denoiser_stem, [cfg.denoiser_stem]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, (width, attention) in enumerate(zip(widths, cfg.denoiser_attention)):
            for _ in range(blocks):
                self.down.append(ResAttention(channels, width, attention, cfg))
                channels = width
                skip_channels.append(channels)
            if level < len(widths) - 1:
                self.downsample.append(SameConv2d(channels, width, 3, stride=2))
                skip_channels.append(channels)

        self.middle = nn.ModuleList([ResAttention(channels, widths[-1], True, cfg),
                                     ResAttention(widths[-1], widths[-1], False, cfg)])

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(blocks + 1):
                self.up.append(ResAttention(channels + skip_channels.pop(), widths[level],
                                            cfg.denoiser_attention[level], cfg))
                channels = widths[level]
            if level > 0:
                self.upsample.append(Upsample(channels))

        self.out_norm = group_norm(cfg.norm_groups, channels, silu=True)
        self.out_conv = SameConv2d(channels, cfg.latent_channels, 3)
        self.levels, self.blocks = len(widths), blocks

    def forward(self, z_t: torch.Tensor, z_i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(self.time_embedding(t))
        x = self.stem(torch.cat([z_t, z_i], dim=1))
        skips = [x]
        down = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                x = next(down)(x, temb)
                skips.append(x)
            if level < self.levels - 1:
                x = self.downsample[level](x)
                skips.append(x)
        for block in self.middle:
            x = block(x, temb)
        up, upsample = iter(self.up), iter(self.upsample)
        for level in reversed(range(self.levels)):
            for _ in range(self.blocks + 1):
                x = next(up)(torch.cat([x, skips.pop()], dim=1), temb)
            if level > 0:
                x = next(upsample)(x)
        return self.out_conv(self.out_norm(x))


NETWORKS = {  # per number of spatial dimensions: image encoder, label encoder, denoiser, label decoder
    2: (ImageEncoder, LabelEncoder, Denoiser, LabelDecoder),
    3: (ImageEncoder3D, LabelEncoder3D, Denoiser3D, LabelDecoder3D),
}


class LDSeg(nn.Module):
    """The four LDSeg networks and their configuration: the 2-D ones for images, the 3-D ones
    (ldseg3d) for volumes."""

    def __init__(self, cfg: LDSegConfig):
        super().__init__()
        self.config = cfg
        image_encoder, label_encoder, denoiser, decoder = NETWORKS[cfg.spatial_dims]
        self.image_encoder = image_encoder(cfg)
        self.label_encoder = label_encoder(cfg)
        self.denoiser = denoiser(cfg)
        self.decoder = decoder(cfg)

    @classmethod
    def from_config(cls, cfg: LDSegConfig, seed: int = 0) -> "LDSeg":
        """Random weights drawn with Keras' initialisers, reproducibly for a seed, without
        touching the caller's global torch RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg).eval()
