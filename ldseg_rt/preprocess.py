"""Image checks and preprocessing: whatever the caller hands in becomes the model's input
(C, S, S) float32 in [0, 1], or a clear error naming what is wrong.

numpy images are channels-last, (H, W) or (H, W, C); torch tensors are channels-first,
(H, W) or (C, H, W). The result goes back in the caller's form (see `Prepared`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .configs import LDSegConfig
from .errors import ImageTypeError, InvalidImageError


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # (C, S, S) float32 in [0, 1]: the image encoder's input
    size: tuple[int, int]  # the caller's (H, W), to which results are resized back
    device: torch.device | None  # the caller's torch device, None for numpy input


def _as_channels_first(img) -> tuple[torch.Tensor, torch.device | None]:
    if isinstance(img, np.ndarray):
        if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
            raise ImageTypeError(f"image dtype {img.dtype} is not a real numeric type")
        if img.ndim not in (2, 3):
            raise InvalidImageError(f"image must be (H, W) or (H, W, C) (numpy is channels-last), got shape {img.shape}")
        pixels = torch.from_numpy(np.require(img, requirements=["C", "W"]))  # copies read-only arrays
        return (pixels[None] if img.ndim == 2 else pixels.permute(2, 0, 1)), None
    if isinstance(img, torch.Tensor):
        if img.dtype == torch.bool or img.is_complex() or not (img.is_floating_point() or img.dtype in (
                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise ImageTypeError(f"image dtype {img.dtype} is not a real numeric type")
        if img.dim() not in (2, 3):
            raise InvalidImageError(f"image must be (H, W) or (C, H, W) (torch is channels-first), got shape {tuple(img.shape)}")
        pixels = img.detach().cpu()
        return (pixels[None] if img.dim() == 2 else pixels), img.device
    raise ImageTypeError(f"image must be a numpy array or a torch tensor, got {type(img).__name__}")


def prepare(img, cfg: LDSegConfig) -> Prepared:
    """Check the image, resize it to the model's input size and min-max scale it to [0, 1]."""
    pixels, device = _as_channels_first(img)
    channels, h, w = pixels.shape
    if h == 0 or w == 0:
        raise InvalidImageError(f"image is empty: {h}x{w} pixels")
    if h < 2 or w < 2:
        raise InvalidImageError(f"image is too small to segment: {h}x{w} pixels (need at least 2x2)")
    if channels != cfg.in_channels:
        raise InvalidImageError(f"model {cfg.name!r} expects {cfg.in_channels} channel(s), the image has {channels}")
    pixels = pixels.double()
    bad = int((~torch.isfinite(pixels)).sum())
    if bad:
        raise InvalidImageError(f"image contains NaN or Inf in {bad} of {pixels.numel()} values")
    if (h, w) != (cfg.image_size, cfg.image_size):
        pixels = F.interpolate(pixels[None], size=(cfg.image_size, cfg.image_size), mode="bilinear",
                               align_corners=False, antialias=True)[0]
    lo, hi = pixels.min(), pixels.max()
    # LDSeg scales each image to [0, 1]; a constant image has no contrast and becomes zeros.
    scaled = (pixels - lo) / (hi - lo) if hi > lo else torch.zeros_like(pixels)
    return Prepared(scaled.float().numpy(), (h, w), device)
