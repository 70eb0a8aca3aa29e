"""Reading 2-D images and label maps (PNG, BMP, TIFF, NPY) and writing PNGs atomically.

Arrays are channels-last like the rest of the numpy API: images (H, W) or (H, W, 3), label
maps (H, W) of integer class ids. A missing file raises FileNotFoundError; an unsupported,
corrupt or unusable one raises InvalidImageError (ImageTypeError for a non-numeric array)
with a message that names the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageTypeError, InvalidImageError
from .atomic import replacing
from .files import IMAGE_SUFFIXES, PILLOW_FORMATS, decoding, existing_file, file_suffix, native_numeric, read_npy

# Pillow modes whose pixels numpy receives unchanged: 'P' gives palette indices, not colours,
# so label maps saved as palette PNGs keep their class ids.
_KEPT_MODES = {"1", "L", "P", "I", "I;16", "F", "RGB"}
_WITHOUT_ALPHA = {"RGBA": "RGB", "LA": "L"}

# Class colours as RGB in [0, 1], background black; shared by label PNGs and figures.
CLASS_COLOURS = np.array([[0, 0, 0], [230, 75, 53], [77, 187, 213], [0, 160, 135], [243, 155, 127],
                          [132, 145, 180], [145, 209, 194], [220, 0, 0]]) / 255


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG, BMP, TIFF or NPY image as (H, W) or (H, W, C), in its stored numeric dtype
    (1-bit images become uint8 0/1; alpha is dropped)."""
    path = existing_file(path, IMAGE_SUFFIXES, "image")
    suffix = file_suffix(path)
    pixels = read_npy(path) if suffix == ".npy" else _read_pillow(path, PILLOW_FORMATS[suffix])
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise InvalidImageError(f"{path}: image must be a non-empty (H, W) or (H, W, C) array, got shape {pixels.shape}")
    return native_numeric(pixels, path)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A label map as an (H, W) array of integer class ids, read like `read_image`."""
    label = read_image(path)
    if label.ndim == 3:
        label = _single_channel(label, path)
    if np.issubdtype(label.dtype, np.floating):
        label = _integral(label, path)
    return label


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 (H, W) or (H, W, 3) array as a PNG, atomically, creating parent folders."""
    path, array = Path(path), np.asarray(array)
    if path.suffix.lower() != ".png":
        raise InvalidImageError(f"{path}: write_png writes .png files")
    if array.dtype != np.uint8:
        raise ImageTypeError(f"{path}: write_png takes uint8 pixels, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or array.size == 0:
        raise InvalidImageError(f"{path}: write_png takes a non-empty (H, W) or (H, W, 3) array, got shape {array.shape}")
    _write_png_atomically(path, array)


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Writes an (H, W) map of class ids 0..255 as a greyscale uint8 PNG, like `write_png`."""
    label = np.asarray(label)
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ImageTypeError(f"{path}: label must hold integer class ids, got {label.dtype}")
    if label.ndim != 2:
        raise InvalidImageError(f"{path}: label must be (H, W), got shape {label.shape}")
    if ((label < 0) | (label > 255)).any():
        raise InvalidImageError(f"{path}: class ids must be in 0..255 to fit a uint8 PNG, "
                                f"got {label.min()}..{label.max()}")
    write_png(path, label.astype(np.uint8))


def _read_pillow(path: Path, fmt: str) -> np.ndarray:
    with decoding(path), Image.open(path, formats=[fmt]) as img:
        frames, mode = getattr(img, "n_frames", 1), img.mode
        pixels = np.array(img.convert(_WITHOUT_ALPHA[mode]) if mode in _WITHOUT_ALPHA else img)
    if frames > 1:
        # A page stack is a volume; reading its first page alone would drop data silently.
        raise InvalidImageError(f"{path}: has {frames} frames, an image must have one")
    if mode not in _KEPT_MODES and mode not in _WITHOUT_ALPHA:
        raise InvalidImageError(f"{path}: unsupported pixel mode {mode!r}")
    return pixels


def _write_png_atomically(path: Path, pixels: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "xb") as f:
        Image.fromarray(pixels).save(f, format="PNG")


def _single_channel(label: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A label saved in colour with equal channels (grey RGB) as its one channel."""
    if not (label == label[..., :1]).all():
        raise InvalidImageError(f"{path}: label maps must be single-channel class ids, "
                                f"this one has {label.shape[2]} differing channels")
    return np.ascontiguousarray(label[..., 0])


def _integral(label: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A float label whose values are all whole numbers, as integers."""
    if not (np.isfinite(label).all() and (label == np.round(label)).all()):
        raise InvalidImageError(f"{path}: label values must be integral class ids, "
                                "found non-integral or non-finite floats")
    fits_uint8 = label.min() >= 0 and label.max() <= 255
    return label.astype(np.uint8 if fits_uint8 else np.int64)


def write_label_colours_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Writes an (H, W) map of class ids as an RGB PNG in CLASS_COLOURS (for people; the class
    ids themselves go to write_label_png or NPY)."""
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise InvalidImageError(f"{path}: label must be an (H, W) map of integer class ids, got {label.dtype} "
                                f"{label.shape}")
    write_png(path, np.round(CLASS_COLOURS[label % len(CLASS_COLOURS)] * 255).astype(np.uint8))
