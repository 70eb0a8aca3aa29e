"""LDSeg's four 3-D networks (the knee MRI configuration; official utilities/model3D.py), NCDHW.

They differ from the 2-D ones in structure, not only in dimension (design section L3): the image
encoder groups its convs, max-pools, has no attention and no SiLU before its BatchNorm; the label
encoder downsamples with stride-2 convs and ends in a kernel-2 conv and a LayerNorm over the whole
latent; the label decoder upsamples by repetition and a conv instead of a transposed conv; the
denoiser keeps only its res blocks' outputs as skips and has 2 (not 3) up blocks per level.
Their sizes and widths come from the configuration, so `small3d` is `knee3d` scaled down.
Initialisers are the official ones, its kernel_init(0) included (KERAS_MIN_SCALE, not zeros).
"""
from __future__ import annotations

import torch
from torch import nn

from ..configs import LDSegConfig
from .label_networks import LabelDecoding, LabelEncoding
from .layers import (KERAS_MIN_SCALE, ConvBlock, ResAttention, ResConvBlock, SelfAttention, TimeEmbedding, Upsample,
                     batch_norm, dense, glorot_, group_norm, same_conv)

DIMS = 3


class ImageEncoder3D(nn.Module):
    """Volume (B, in_channels, D, H, W) in [0, 1] -> condition latent z_i (B, latent_channels, d, h, w)."""

    def __init__(self, cfg: LDSegConfig):
        super().__init__()
        groups = cfg.image_encoder_groups  # the official conv_block's num_channels: conv groups and GroupNorm groups
        self.stem = same_conv(cfg.in_channels, cfg.image_encoder_stem, 3, dims=DIMS)
        blocks, channels = [], cfg.image_encoder_stem
        for width, attention in zip(cfg.image_encoder_widths, cfg.image_encoder_attention):
            blocks.append(ConvBlock(channels, width, groups, cfg.dropout, dims=DIMS, conv_groups=groups, max_pool=True,
                                    zero_scale=KERAS_MIN_SCALE))
            if attention:  # knee3d has none, as the official network; a configuration may ask for it
                blocks.append(SelfAttention(width, cfg.image_encoder_heads, cfg.attention_groups,
                                            residual_from_normalized=False, zero_scale=KERAS_MIN_SCALE))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.to_latent = same_conv(channels, cfg.latent_channels, 3, init=lambda w: glorot_(w, KERAS_MIN_SCALE),
                                   dims=DIMS)
        self.norm = batch_norm(cfg.latent_channels, DIMS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_latent(self.blocks(self.stem(image))))


class LabelEncoder3D(LabelEncoding):
    """Label volume (B, 1, D, H, W), class ids as floats -> label latent z_l, layer-normalised."""

    def __init__(self, cfg: LDSegConfig):
        blocks, channels = [], 1
        for i, width in enumerate(cfg.label_encoder_widths):
            if i:  # DownSample: stride-2 conv3 at the width of the block before it
                blocks.append(same_conv(channels, channels, 3, stride=2, dims=DIMS))
            blocks.append(ResConvBlock(channels, width, cfg.dropout, DIMS))
            channels = width
        # kernel 2, 'same': pads (0, 1); then LayerNormalization(axis=(1, 2, 3, 4)) over C, D, H, W
        super().__init__(cfg.latent_shape, nn.Sequential(*blocks),
                         same_conv(channels, cfg.latent_channels, 2, dims=DIMS))


class LabelDecoder3D(LabelDecoding):
    """Latent (B, latent_channels, d, h, w) -> class probabilities (B, num_classes, D, H, W)."""

    def __init__(self, cfg: LDSegConfig):
        stages, channels = [], cfg.latent_channels
        for width in cfg.decoder_widths:
            stages += [Upsample(channels, width, DIMS), ResConvBlock(width, width, cfg.dropout, DIMS)]
            channels = width
        super().__init__(nn.Sequential(*stages), same_conv(channels, cfg.num_classes, 1, dims=DIMS),
                         batch_norm(cfg.num_classes, DIMS))


class Denoiser3D(nn.Module):
    """U-Net on the latent volume: (z_t, z_i, t) -> predicted noise eps, shaped like z_t."""

    def __init__(self, cfg: LDSegConfig):
        super().__init__()
        widths, blocks = cfg.denoiser_widths, cfg.num_res_blocks

        def res_attention(cin: int, cout: int, attention: bool) -> ResAttention:
            return ResAttention(cin, cout, attention, cfg, DIMS, zero_scale=KERAS_MIN_SCALE)

        self.stem = same_conv(2 * cfg.latent_channels, cfg.denoiser_stem, 3, dims=DIMS)
        self.time_embedding = TimeEmbedding(cfg.time_dim)
        self.time_mlp = nn.Sequential(dense(cfg.time_dim, cfg.time_dim), nn.SiLU(),
                                      dense(cfg.time_dim, cfg.time_dim))

        channels, skip_channels = cfg.denoiser_stem, []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, (width, attention) in enumerate(zip(widths, cfg.denoiser_attention)):
            for _ in range(blocks):
                self.down.append(res_attention(channels, width, attention))
                channels = width
                skip_channels.append(channels)  # skips: the res blocks' outputs only
            if level < len(widths) - 1:
                self.downsample.append(same_conv(channels, width, 3, stride=2, dims=DIMS))

        self.middle = nn.ModuleList([res_attention(channels, widths[-1], True),
                                     res_attention(widths[-1], widths[-1], False)])

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(blocks):  # one up block per skip: num_res_blocks per level
                self.up.append(res_attention(channels + skip_channels.pop(), widths[level],
                                             cfg.denoiser_attention[level]))
                channels = widths[level]
            if level > 0:
                self.upsample.append(Upsample(channels, dims=DIMS))

        self.out_norm = group_norm(cfg.norm_groups, channels, silu=True)
        self.out_conv = same_conv(channels, cfg.latent_channels, 3, dims=DIMS)
        self.levels, self.blocks = len(widths), blocks

    def forward(self, z_t: torch.Tensor, z_i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(self.time_embedding(t))
        x = self.stem(torch.cat([z_t, z_i], dim=1))
        skips = []
        down = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                x = next(down)(x, temb)
                skips.append(x)
            if level < self.levels - 1:
                x = self.downsample[level](x)
        for block in self.middle:
            x = block(x, temb)
        up, upsample = iter(self.up), iter(self.upsample)
        for level in reversed(range(self.levels)):
            for _ in range(self.blocks):
                x = next(up)(torch.cat([x, skips.pop()], dim=1), temb)
            if level > 0:
                x = next(upsample)(x)
        return self.out_conv(self.out_norm(x))
