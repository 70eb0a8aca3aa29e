"""Image checks and preprocessing: whatever the caller hands in becomes the model's input
(C, S, S) float32 in [0, 1], or a clear error naming what is wrong.

numpy images are channels-last, (H, W) or (H, W, C); torch tensors are channels-first,
(H, W) or (C, H, W). The result goes back in the caller's form (see `Prepared`).

Intensities are scaled robustly: to [0, 1] between the 0.5th and 99.5th percentiles of the
image (clipped outside), not between its minimum and maximum, so that a few extreme pixels
(a hot pixel, a metal artefact) cannot squash the anatomy into a sliver of the range. A
constant value filling a border or a corner far below (or above) the rest, as scanners pad
CT, is left out of the percentiles. On a clean image this is min-max scaling up to the
clipped 0.5% tails. An image with no contrast is refused; one the model is unlikely to read
(mostly outside its intensity window, with no spatial structure: pure noise, or far from the
images the model was trained on, by the statistics training recorded) gets a warning in
`SampleResult.warnings`.

Models imported from the official LDSeg weights were trained on the official loader's inputs
instead (mode OFFICIAL): nearest-neighbour resize as OpenCV's INTER_NEAREST does it, then
min-max scaling of each image to [0, 1]; a bundle's manifest records which mode its model takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import OFFICIAL, ROBUST, LDSegConfig
from ..errors import ImageTypeError, InvalidArgumentError, InvalidImageError

WINDOW_PERCENTILES = (0.5, 99.5)  # the intensity window of an image
PADDING_MIN_FRACTION = 0.01  # a constant extreme value on at least this share of pixels may be padding
PADDING_GAP = 0.5  # ... and is, when it lies this many window widths beyond the other pixels
OUTSIDE_WINDOW_WARNING = 0.25  # share of pixels clipped above which the image is flagged
NOISE_CORRELATION = 0.2  # neighbouring pixels correlate less than this: no structure to segment
STATISTICS = ("mean", "std", "neighbour_correlation")  # of a prepared image, recorded over training data
STATISTICS_MARGIN = (0.25, 0.05)  # a training range is widened by 25% of its width plus 0.05 on each side
INTENSITY = (f"per image, to [0, 1] between its {WINDOW_PERCENTILES[0]}th and {WINDOW_PERCENTILES[1]}th percentiles, "
             "clipped outside; a constant value padding a border far beyond the rest is left out of the percentiles; "
             "an image without contrast is refused")
RESIZE = "bilinear, antialiased, to size; results resized back to the input's size"
OFFICIAL_RESIZE = "nearest neighbour (OpenCV INTER_NEAREST), to size; results resized back to the input's size"
OFFICIAL_INTENSITY = "per image, min-max to [0, 1] over all channels; an image without contrast is refused"
_TORCH_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                 torch.uint64)


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # (C, S, S) float32 in [0, 1]: the image encoder's input
    size: tuple[int, int]  # the caller's (H, W), to which results are resized back
    device: torch.device | None  # the caller's torch device, None for numpy input
    warnings: list = field(default_factory=list)  # why the model may not read this image


def _native_numpy(img: np.ndarray) -> np.ndarray:
    """A numeric array torch can take: native byte order, and float64 for what torch lacks
    (longdouble, unsigned words wider than 8 bits)."""
    if img.dtype == bool or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ImageTypeError(f"image dtype {img.dtype} is not a real numeric type")
    if not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.dtype in (np.longdouble, np.uint16, np.uint32, np.uint64) and img.dtype != np.float64:
        img = img.astype(np.float64)
    return np.require(img, requirements=["C", "W"])  # copies read-only arrays


def _as_channels_first(img) -> tuple[torch.Tensor, torch.device | None]:
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise InvalidImageError(f"image must be (H, W) or (H, W, C) (numpy is channels-last), got shape {img.shape}")
        if img.ndim == 3 and img.shape[0] <= 4 < min(img.shape[1:]):
            raise InvalidImageError(f"image of shape {img.shape} looks channels-first; numpy images are channels-last "
                                    f"(H, W, C): pass img.transpose(1, 2, 0)")
        pixels = torch.from_numpy(_native_numpy(img))
        return (pixels[None] if img.ndim == 2 else pixels.permute(2, 0, 1)), None
    if isinstance(img, torch.Tensor):
        if img.dtype == torch.bool or img.is_complex() or not (img.is_floating_point() or img.dtype in _TORCH_DTYPES):
            raise ImageTypeError(f"image dtype {img.dtype} is not a real numeric type")
        if img.dim() not in (2, 3):
            raise InvalidImageError(f"image must be (H, W) or (C, H, W) (torch is channels-first), got shape {tuple(img.shape)}")
        pixels = img.detach().cpu()
        if pixels.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few torch ops take these
            pixels = torch.from_numpy(pixels.numpy().astype(np.float64))
        return (pixels[None] if img.dim() == 2 else pixels), img.device
    raise ImageTypeError(f"image must be a numpy array or a torch tensor, got {type(img).__name__}")


def spatial_size(img) -> tuple[int, int] | None:
    """(H, W) of an image in either of the forms `prepare` takes, read from its shape alone (no
    copy), or None where the form is wrong (`prepare` then says why)."""
    shape = tuple(getattr(img, "shape", ()))
    if isinstance(img, np.ndarray) and len(shape) in (2, 3):
        return shape[0], shape[1]
    if isinstance(img, torch.Tensor) and len(shape) in (2, 3):
        return shape[-2], shape[-1]
    return None


def _without_padding(values: np.ndarray) -> np.ndarray:
    """The values less a constant extreme value that lies far beyond all the others (padding)."""
    for extreme in (values.min(), values.max()):
        padded = values == extreme
        if padded.mean() < PADDING_MIN_FRACTION or padded.all():
            continue
        rest = values[~padded]
        lo, hi = np.percentile(rest, WINDOW_PERCENTILES)
        if abs(extreme - np.clip(extreme, lo, hi)) > PADDING_GAP * max(hi - lo, np.finfo(float).tiny):
            values = rest
    return values


def intensity_window(pixels: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of the image's robust intensity window; raises for an image with no contrast."""
    values = _without_padding(pixels.reshape(-1))
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    if hi <= lo:  # more than 99% of the pixels share one value: fall back to the full range
        lo, hi = values.min(), values.max()
    if hi <= lo:
        raise InvalidImageError(f"image has no contrast: every pixel is {float(lo):g}; there is nothing to segment")
    return float(lo), float(hi)


def _neighbour_correlation(scaled: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent pixels: about 0 for noise."""
    centred = scaled - scaled.mean(axis=(1, 2), keepdims=True)
    var = (centred ** 2).mean()
    if var == 0:
        return 1.0
    pairs = (centred[:, 1:, :] * centred[:, :-1, :]).mean() + (centred[:, :, 1:] * centred[:, :, :-1]).mean()
    return float(pairs / (2 * var))


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """What a prepared image (C, S, S) in [0, 1] looks like, by the numbers training records."""
    return {"mean": float(pixels.mean()), "std": float(pixels.std()),
            "neighbour_correlation": _neighbour_correlation(pixels)}


def statistics_range(images) -> dict[str, list[float]]:
    """[min, max] of each of STATISTICS over prepared images (an iterable of (C, S, S) arrays)."""
    values = [image_statistics(pixels) for pixels in images]
    if not values:
        return {}
    return {name: [min(v[name] for v in values), max(v[name] for v in values)] for name in STATISTICS}


def _unlike_training(stats: dict[str, float], expected: dict) -> list[str]:
    out = []
    for name, (lo, hi) in expected.items():
        margin = STATISTICS_MARGIN[0] * (hi - lo) + STATISTICS_MARGIN[1]
        if name in stats and not lo - margin <= stats[name] <= hi + margin:
            out.append(f"the image's {name.replace('_', ' ')} after scaling, {stats[name]:.3f}, lies far outside "
                       f"the training images' range [{lo:.3f}, {hi:.3f}]: the model may not read it")
    return out


def resize_nearest(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size) as OpenCV's INTER_NEAREST picks pixels: source index
    floor(i * (1 / (size / n))), in double precision, capped at n - 1."""
    rows, cols = (np.minimum(np.floor(np.arange(size) * (1.0 / (size / n))).astype(np.int64), n - 1)
                  for n in pixels.shape[1:])
    return pixels[:, torch.from_numpy(rows)][:, :, torch.from_numpy(cols)]


def prepare(img, cfg: LDSegConfig, expected: dict | None = None, mode: str = ROBUST) -> Prepared:
    """Check the image, resize it to the model's input size and scale its intensity window to
    [0, 1]. expected: the training images' statistics_range, if recorded, to flag images unlike them.
    mode: ROBUST, or OFFICIAL for models imported from the official LDSeg weights."""
    if mode not in (ROBUST, OFFICIAL):
        raise InvalidArgumentError(f"unknown preprocessing mode {mode!r}; expected {ROBUST!r} or {OFFICIAL!r}")
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
    largest = float(pixels.abs().max())
    if largest > 1e300:  # differences of such values overflow; a power of two rescales exactly
        pixels = pixels * 2.0 ** -np.ceil(np.log2(largest))
    if mode == OFFICIAL:
        return _prepare_official(pixels, cfg, (h, w), device, expected)
    if (h, w) != (cfg.image_size, cfg.image_size):
        pixels = F.interpolate(pixels[None], size=(cfg.image_size, cfg.image_size), mode="bilinear",
                               align_corners=False, antialias=True)[0]
    values = pixels.numpy()
    lo, hi = intensity_window(values)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    warnings = []
    outside = float(((values < lo) | (values > hi)).mean())
    if outside > OUTSIDE_WINDOW_WARNING:
        warnings.append(f"{outside:.0%} of the pixels lie outside the image's intensity window "
                        f"[{lo:.4g}, {hi:.4g}]: the model may not read this image")
    warnings += _structure_warnings(scaled, expected)
    return Prepared(scaled.astype(np.float32), (h, w), device, warnings)


def _structure_warnings(scaled: np.ndarray, expected: dict | None) -> list[str]:
    warnings = []
    stats = image_statistics(scaled)
    if stats["neighbour_correlation"] < NOISE_CORRELATION:
        warnings.append(f"the image has no spatial structure (neighbouring pixels correlate "
                        f"{stats['neighbour_correlation']:.2f}): it looks like noise, and its segmentation is not to "
                        "be trusted")
    return warnings + _unlike_training(stats, expected or {})


def _prepare_official(pixels: torch.Tensor, cfg: LDSegConfig, size: tuple[int, int], device,
                      expected: dict | None) -> Prepared:
    """The official LDSeg loader's preprocessing (utilities/dataLoader.py: cv2.resize INTER_NEAREST, then
    min-max over the whole image)."""
    values = resize_nearest(pixels, cfg.image_size).numpy()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise InvalidImageError(f"image has no contrast: every pixel is {lo:g}; there is nothing to segment")
    scaled = (values - lo) / (hi - lo)
    return Prepared(scaled.astype(np.float32), size, device, _structure_warnings(scaled, expected))
