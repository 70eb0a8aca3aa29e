"""Named configurations of both model families.

LDSeg (L): `glas512` is the paper's 2D configuration exactly; `small` is a scaled-down
variant with the same structure for tests, the demo and CPU training. `knee3d` is the paper's
3-D configuration (volumes, whose networks differ in structure from the 2-D ones: see
ldseg_rt.models.ldseg3d); `small3d` the same structure scaled down. Pixel-space ambiguous
segmentation (P): `amb128` is the paper's U-Net and diffusion settings; `amb_small` the same
structure scaled down for CPU training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

# How a model's inputs are prepared: ours (a robust intensity window), or the official LDSeg
# loader's (min-max scaling), which models imported from the official weights were trained on.
ROBUST, OFFICIAL = "robust", "official"


@dataclass(frozen=True)
class LDSegConfig:
    name: str
    image_size: int | tuple[int, ...]  # a square image's side, or the input's (H, W) or volume (D, H, W)
    in_channels: int
    num_classes: int
    latent_channels: int = 1
    # Image encoder E: stem conv, then conv_blocks that each halve the resolution.
    image_encoder_stem: int = 16
    image_encoder_widths: tuple[int, ...] = (32, 64, 64, 32)
    image_encoder_attention: tuple[bool, ...] = (False, False, True, True)
    image_encoder_heads: int = 8
    image_encoder_groups: int = 4
    attention_groups: int = 8
    dropout: float = 0.2
    # Label encoder (training only): residual blocks with max-pooling between them.
    label_encoder_widths: tuple[int, ...] = (16, 32, 64, 64, 32)
    # Label decoder G: one transposed-conv stage per doubling.
    decoder_widths: tuple[int, ...] = (32, 64, 64, 32)
    # Denoiser D: a U-Net on the latent.
    denoiser_stem: int = 16
    denoiser_widths: tuple[int, ...] = (16, 32, 64)
    denoiser_attention: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 2
    norm_groups: int = 4
    time_dim: int = 64
    # Diffusion.
    timesteps: int = 1000
    cosine_s: float = 0.008
    steps: int = 15
    eta: float = 0.0
    family = "ldseg"

    def __post_init__(self):
        downsamplings = len(self.image_encoder_widths)
        if len(self.image_encoder_attention) != downsamplings:
            raise ConfigError(f"{self.name}: image_encoder_attention needs one flag per encoder block")
        if len(self.denoiser_attention) != len(self.denoiser_widths):
            raise ConfigError(f"{self.name}: denoiser_attention needs one flag per denoiser level")
        if len(self.label_encoder_widths) - 1 != downsamplings or len(self.decoder_widths) != downsamplings:
            raise ConfigError(
                f"{self.name}: label encoder ({len(self.label_encoder_widths) - 1} poolings), image encoder "
                f"({downsamplings} blocks) and decoder ({len(self.decoder_widths)} stages) must change "
                "resolution by the same factor")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"{self.name}: image_size {self.image_size} must be one side, (H, W) or (D, H, W)")
        if any(side % 2 ** downsamplings for side in self.image_shape):
            raise ConfigError(f"{self.name}: image_size {self.image_size} is not divisible by {2 ** downsamplings}")
        if any(side % 2 ** (len(self.denoiser_widths) - 1) for side in self.latent_shape[1:]):
            raise ConfigError(f"{self.name}: latent {self.latent_shape[1:]} too small for "
                              f"{len(self.denoiser_widths)} levels")
        if self.num_classes < 2 or self.in_channels < 1:
            raise ConfigError(f"{self.name}: needs at least 2 classes and 1 input channel")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The networks' input size: (H, W) for images, (D, H, W) for volumes."""
        return (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size)

    @property
    def spatial_dims(self) -> int:
        return len(self.image_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        factor = 2 ** len(self.image_encoder_widths)
        return (self.latent_channels, *(side // factor for side in self.image_shape))

    @property
    def condition_shape(self) -> tuple[int, ...]:
        """What the image encoder gives the denoiser: the image latent z_i."""
        return self.latent_shape

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "LDSegConfig":
        return _from_dict(cls, fields)


@dataclass(frozen=True)
class AmbiguousConfig:
    """Pixel-space diffusion for ambiguous segmentation: a binary mask
    embedded as x0 = 2m - 1, the image concatenated as condition, a continuous-time VP
    process with input scaling, and a U-Net denoiser."""
    name: str
    image_size: int = 128
    in_channels: int = 1  # image channels (the U-Net sees in_channels + 1)
    # (image - mean) / std per channel before the U-Net, as models imported from the original were
    # trained (ImageNet's statistics); empty: the prepared image as it is.
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()
    # U-Net (the original's UNetModel; see ldseg_rt.models.ambiguous).
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: tuple[int, ...] = (1, 2, 3, 4)  # per level
    num_middle_blocks: int = 4  # res blocks; attention between them when the lowest level has it
    attention_levels: tuple[int, ...] = (-1,)  # levels with self-attention, negative from the end
    heads: int = 4
    norm_groups: int = 32  # GroupNorm groups; a width not divisible by it gets one per channel
    time_embed_dim: int = 32  # sinusoidal features of t in [0, 1], max period time_max_period
    time_max_period: float = 10.0
    time_dim: int = 128
    dropout: float = 0.0
    # Diffusion.
    prediction: str = "x"  # 'eps', 'x' (tanh output) or 'v'
    input_scale: float = 0.1  # b: SNR_b = b^2 SNR
    logsnr_clamp: float = 20.0
    loss_weighting: str = "snr_plus1"
    sampler: str = "ddpm"  # 'ddpm' (ancestral) or 'ddim'
    variance: str = "large"  # DDPM posterior variance: 'large' or 'small'
    steps: int = 10
    clip: float = 1.0  # x_hat clipped to [-clip, clip]
    eta: float = 0.0  # DDIM's noise, when sampler == 'ddim'
    num_classes = 2  # background, foreground (mask = x_hat > 0)
    family = "ambiguous"
    spatial_dims = 2

    def __post_init__(self):
        if len(self.num_res_blocks) != len(self.channel_mults):
            raise ConfigError(f"{self.name}: num_res_blocks needs one entry per channel multiplier")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ConfigError(f"{self.name}: image_size {self.image_size} is not divisible by "
                              f"{2 ** (len(self.channel_mults) - 1)}")
        levels = len(self.channel_mults)
        if any(not -levels <= level < levels for level in self.attention_levels):
            raise ConfigError(f"{self.name}: attention_levels {self.attention_levels} outside {levels} levels")
        for level in self.attention_levels:
            if self.base_channels * self.channel_mults[level] % self.heads:
                raise ConfigError(f"{self.name}: {self.base_channels * self.channel_mults[level]} channels "
                                  f"do not split into {self.heads} heads")
        if self.prediction not in ("eps", "x", "v"):
            raise ConfigError(f"{self.name}: prediction must be 'eps', 'x' or 'v', got {self.prediction!r}")
        if not self.input_scale > 0:
            raise ConfigError(f"{self.name}: input_scale must be > 0, got {self.input_scale}")
        if (self.image_mean or self.image_std) and not (
                len(self.image_mean) == len(self.image_std) == self.in_channels and min(self.image_std) > 0):
            raise ConfigError(f"{self.name}: image_mean and image_std need one value per image channel "
                              f"({self.in_channels}), std > 0; got {self.image_mean}, {self.image_std}")

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The diffusion state: the mask itself, one channel at full resolution."""
        return (1, self.image_size, self.image_size)

    @property
    def condition_shape(self) -> tuple[int, int, int]:
        """The denoiser's condition: the image itself."""
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "AmbiguousConfig":
        return _from_dict(cls, fields)


def _from_dict(cls, fields: dict):
    """A configuration from its to_dict() form (JSON turns tuples into lists)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise ConfigError(f"unknown configuration fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


CONFIGS = {
    "glas512": LDSegConfig(name="glas512", image_size=512, in_channels=3, num_classes=2),
    "small": LDSegConfig(
        name="small",
        image_size=128,
        in_channels=1,
        num_classes=3,
        image_encoder_widths=(16, 32, 32),
        image_encoder_attention=(False, False, True),  # attention at 16x16 only: CPU-trainable
        label_encoder_widths=(16, 32, 32, 32),
        decoder_widths=(32, 32, 16),
    ),
    # The official 3-D networks have no attention in the image encoder.
    "knee3d": LDSegConfig(name="knee3d", image_size=(128, 128, 256), in_channels=1, num_classes=3,
                          image_encoder_attention=(False,) * 4),
    "small3d": LDSegConfig(name="small3d", image_size=(32, 32, 64), in_channels=1, num_classes=3,
                           image_encoder_widths=(8, 16, 8), image_encoder_attention=(False,) * 3,
                           label_encoder_widths=(8, 16, 16, 8), decoder_widths=(16, 16, 8), denoiser_widths=(16, 32),
                           denoiser_attention=(False, True)),
    "amb128": AmbiguousConfig(name="amb128"),
    "amb_small": AmbiguousConfig(name="amb_small", image_size=32, base_channels=16, channel_mults=(1, 2, 2),
                                 num_res_blocks=(1, 1, 1), num_middle_blocks=1, norm_groups=8),
}


FAMILIES = {"ldseg": LDSegConfig, "ambiguous": AmbiguousConfig}


def config_from_dict(fields: dict, family: str = "ldseg") -> LDSegConfig | AmbiguousConfig:
    """A configuration as a checkpoint or bundle records it (to_dict() and its family)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; this ldseg_rt knows {sorted(FAMILIES)}")
    return FAMILIES[family].from_dict(fields)


def get_config(name: str) -> LDSegConfig | AmbiguousConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown configuration {name!r}; known: {sorted(CONFIGS)}") from None
