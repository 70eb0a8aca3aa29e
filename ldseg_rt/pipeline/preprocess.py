"""Image checks and preprocessing: whatever the caller hands in becomes the model's input
(C, S, S) float32 in [0, 1] (for a 3-D model (C, D, H, W)), or a clear error naming what is wrong.

numpy images are channels-last, (H, W) or (H, W, C); torch tensors are channels-first,
(H, W) or (C, H, W). Volumes for a 3-D model come in voxel order (X, Y, Z) as nibabel reads
them, numpy (X, Y, Z[, C]), torch ([C, ]X, Y, Z); the networks see (D, H, W) = (Z, Y, X), the
axis order of the official 3-D loader (SimpleITK's arrays). The result goes back in the
caller's form and axis order (see `Prepared`).

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
Volumes are resampled to the networks' size by a linear zoom (scipy, order 1, edges repeated),
as the official 3-D loader does, in both modes; their intensities are scaled over the whole
volume (min-max in mode OFFICIAL).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

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
ZOOM = ("volumes (X, Y, Z) to (D, H, W) = (Z, Y, X) order, then a linear zoom (scipy.ndimage.zoom order 1, "
        "mode nearest) to size; results resampled back linearly to the input's size and axis order")
_TORCH_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                 torch.uint64)


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # (C, S, S) or (C, D, H, W) float32 in [0, 1]: the image encoder's input
    size: tuple[int, ...]  # the caller's (H, W), or a volume's (Z, Y, X): what results are resized back to
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


_FORMS = {(2, "numpy"): "image must be (H, W) or (H, W, C) (numpy is channels-last)",
          (2, "torch"): "image must be (H, W) or (C, H, W) (torch is channels-first)",
          (3, "numpy"): "a 3-D model takes a volume (X, Y, Z) or (X, Y, Z, C) (numpy is channels-last)",
          (3, "torch"): "a 3-D model takes a volume (X, Y, Z) or (C, X, Y, Z) (torch is channels-first)"}


def _as_channels_first(img, dims: int) -> tuple[torch.Tensor, torch.device | None]:
    """(C, *spatial) as a CPU tensor, and the caller's torch device (None for numpy); dims: the
    model's spatial dimensions."""
    if isinstance(img, np.ndarray):
        if img.ndim not in (dims, dims + 1):
            raise InvalidImageError(f"{_FORMS[dims, 'numpy']}, got shape {img.shape}")
        if img.ndim == dims + 1 and img.shape[0] <= 4 < min(img.shape[1:]):
            order = ", ".join(map(str, [*range(1, dims + 1), 0]))
            raise InvalidImageError(f"{_noun(dims)} of shape {img.shape} looks channels-first; numpy arrays are "
                                    f"channels-last: pass img.transpose({order})")
        pixels = torch.from_numpy(_native_numpy(img))
        return (pixels[None] if img.ndim == dims else pixels.movedim(-1, 0)), None
    if isinstance(img, torch.Tensor):
        if img.dtype == torch.bool or img.is_complex() or not (img.is_floating_point() or img.dtype in _TORCH_DTYPES):
            raise ImageTypeError(f"image dtype {img.dtype} is not a real numeric type")
        if img.dim() not in (dims, dims + 1):
            raise InvalidImageError(f"{_FORMS[dims, 'torch']}, got shape {tuple(img.shape)}")
        pixels = img.detach().cpu()
        if pixels.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few torch ops take these
            pixels = torch.from_numpy(pixels.numpy().astype(np.float64))
        return (pixels[None] if img.dim() == dims else pixels), img.device
    raise ImageTypeError(f"image must be a numpy array or a torch tensor, got {type(img).__name__}")


def _noun(dims: int) -> str:
    return "image" if dims == 2 else "volume"


def native_size(cfg) -> tuple[int, ...]:
    """The spatial size of an input the model takes without resampling: (H, W), or a volume's (X, Y, Z)."""
    return cfg.image_shape if cfg.spatial_dims == 2 else cfg.image_shape[::-1]


def spatial_size(img, dims: int = 2) -> tuple[int, ...] | None:
    """The spatial size ((H, W), or a volume's (X, Y, Z)) of an image in either of the forms
    `prepare` takes, read from its shape alone (no copy), or None where the form is wrong
    (`prepare` then says why)."""
    shape = tuple(getattr(img, "shape", ()))
    if isinstance(img, np.ndarray) and len(shape) in (dims, dims + 1):
        return shape[:dims]
    if isinstance(img, torch.Tensor) and len(shape) in (dims, dims + 1):
        return shape[-dims:]
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
    """Mean correlation of pixels adjacent along each spatial axis: about 0 for noise."""
    axes = tuple(range(1, scaled.ndim))
    centred = scaled - scaled.mean(axis=axes, keepdims=True)
    var = (centred ** 2).mean()
    if var == 0:
        return 1.0
    def along(axis: int, part: slice) -> tuple:
        return (slice(None),) * axis + (part,)
    pairs = sum((centred[along(a, slice(1, None))] * centred[along(a, slice(None, -1))]).mean() for a in axes)
    return float(pairs / (len(axes) * var))


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """What a prepared image (C, S, S) or volume (C, D, H, W) in [0, 1] looks like, by the numbers
    training records."""
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
    dims = cfg.spatial_dims
    pixels, device = _as_channels_first(img, dims)
    channels, size = pixels.shape[0], tuple(pixels.shape[1:])
    shown = "x".join(map(str, size))
    if min(size) == 0:
        raise InvalidImageError(f"{_noun(dims)} is empty: {shown} {'pixels' if dims == 2 else 'voxels'}")
    if min(size) < 2:
        raise InvalidImageError(f"{_noun(dims)} is too small to segment: {shown} (need at least 2 along each axis)")
    if channels != cfg.in_channels:
        raise InvalidImageError(f"model {cfg.name!r} expects {cfg.in_channels} channel(s), the {_noun(dims)} has "
                                f"{channels}")
    pixels = pixels.double()
    bad = int((~torch.isfinite(pixels)).sum())
    if bad:
        raise InvalidImageError(f"{_noun(dims)} contains NaN or Inf in {bad} of {pixels.numel()} values")
    largest = float(pixels.abs().max())
    if largest > 1e300:  # differences of such values overflow; a power of two rescales exactly
        pixels = pixels * 2.0 ** -np.ceil(np.log2(largest))
    if dims == 3:
        return _prepare_volume(pixels.permute(0, 3, 2, 1), cfg, device, expected, mode)
    if mode == OFFICIAL:
        return _prepare_official(pixels, cfg, size, device, expected)
    if size != cfg.image_shape:
        pixels = F.interpolate(pixels[None], size=cfg.image_shape, mode="bilinear", align_corners=False,
                               antialias=True)[0]
    scaled, warnings = _robust_scale(pixels.numpy())
    warnings += _structure_warnings(scaled, expected)
    return Prepared(scaled.astype(np.float32), size, device, warnings)


def _robust_scale(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Values scaled to [0, 1] over their robust intensity window, clipped outside."""
    lo, hi = intensity_window(values)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    warnings = []
    outside = float(((values < lo) | (values > hi)).mean())
    if outside > OUTSIDE_WINDOW_WARNING:
        warnings.append(f"{outside:.0%} of the pixels lie outside the image's intensity window "
                        f"[{lo:.4g}, {hi:.4g}]: the model may not read this image")
    return scaled, warnings


def _min_max_scale(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise InvalidImageError(f"image has no contrast: every pixel is {lo:g}; there is nothing to segment")
    return (values - lo) / (hi - lo)


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
    scaled = _min_max_scale(resize_nearest(pixels, cfg.image_size).numpy())
    return Prepared(scaled.astype(np.float32), size, device, _structure_warnings(scaled, expected))


def _prepare_volume(voxels: torch.Tensor, cfg: LDSegConfig, device, expected: dict | None, mode: str) -> Prepared:
    """A volume (C, D, H, W): intensities scaled over the whole volume, then zoomed linearly to the
    networks' size, as the official 3-D loader does (utilities/dataLoader3D.py: min-max, then
    scipy.ndimage.zoom order 1, mode nearest, on float32)."""
    values = voxels.numpy()
    scaled, warnings = (_min_max_scale(values), []) if mode == OFFICIAL else _robust_scale(values)
    zoomed = np.stack([ndimage.zoom(channel.astype(np.float32), np.divide(cfg.image_shape, channel.shape), order=1,
                                    mode="nearest") for channel in scaled])
    return Prepared(zoomed, values.shape[1:], device, warnings + _structure_warnings(zoomed, expected))
