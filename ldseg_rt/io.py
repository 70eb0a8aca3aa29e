"""Reading images, label maps and volumes for training and segmentation, pairing images with
their label files, and writing PNGs atomically.

Arrays are channels-last like the rest of the numpy API: images (H, W) or (H, W, 3), label
maps (H, W) of integer class ids, volumes (X, Y, Z) with their voxel spacing. A missing file
raises FileNotFoundError; an unsupported, corrupt or unusable one raises InvalidImageError
(ImageTypeError for a non-numeric array) with a message that names the file.
"""
from __future__ import annotations

import os
import re
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from PIL import Image

from .atomic import replacing
from .errors import DatasetError, ImageTypeError, InvalidArgumentError, InvalidImageError

# Pillow is told the format, so a file whose contents do not match its extension (say a JPEG
# named .png, whose lossy compression would corrupt label values) is refused, not decoded.
PILLOW_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
IMAGE_SUFFIXES = (*PILLOW_FORMATS, ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")
DATA_SUFFIXES = (*IMAGE_SUFFIXES, ".nii", ".nii.gz")
LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_segmentation")

# Pillow modes whose pixels numpy receives unchanged: 'P' gives palette indices, not colours,
# so label maps saved as palette PNGs keep their class ids.
_KEPT_MODES = {"1", "L", "P", "I", "I;16", "F", "RGB"}
_WITHOUT_ALPHA = {"RGBA": "RGB", "LA": "L"}

# What Pillow, numpy and nibabel raise for a corrupt or truncated file.
_CORRUPT_FILE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
                        Image.DecompressionBombError, ImageFileError, HeaderDataError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG, BMP, TIFF or NPY image as (H, W) or (H, W, C), in its stored numeric dtype
    (1-bit images become uint8 0/1; alpha is dropped)."""
    path = _existing_file(path, IMAGE_SUFFIXES, "image")
    suffix = _file_suffix(path)
    pixels = _read_npy(path) if suffix == ".npy" else _read_pillow(path, PILLOW_FORMATS[suffix])
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise InvalidImageError(f"{path}: image must be a non-empty (H, W) or (H, W, C) array, got shape {pixels.shape}")
    return _native_numeric(pixels, path)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A label map as an (H, W) array of integer class ids, read like `read_image`."""
    label = read_image(path)
    if label.ndim == 3:
        label = _single_channel(label, path)
    if np.issubdtype(label.dtype, np.floating):
        label = _integral(label, path)
    return label


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3-D NIfTI (.nii, .nii.gz) or NPY volume as it is stored, and its voxel spacing
    (the header's zooms; 1.0 per axis for NPY, which has none)."""
    path = _existing_file(path, VOLUME_SUFFIXES, "volume")
    if _file_suffix(path) == ".npy":
        data, spacing = _read_npy(path), (1.0, 1.0, 1.0)
    else:
        data, spacing = _read_nifti(path)
    if data.ndim != 3:
        raise InvalidImageError(f"{path}: volume must be 3-D, got shape {data.shape}")
    return _native_numeric(data, path), spacing


def volume_slices(volume: np.ndarray, axis: int = 2) -> list[np.ndarray]:
    """The 2-D slices of a 3-D volume along `axis` (0, 1, 2 or negative), as views."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidImageError(f"volume must be 3-D, got shape {volume.shape}")
    if axis not in range(-3, 3):
        raise InvalidArgumentError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    return list(np.moveaxis(volume, axis, 0))


def find_pairs(image_dir: str | os.PathLike, label_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, label) paths, in natural order of the image names. A label belongs to an image
    when its stem is the image's stem, alone or followed by one of LABEL_SUFFIXES."""
    images = _data_files(image_dir, "image")
    labels_by_stem: dict[str, list[Path]] = {}
    for label in _data_files(label_dir, "label"):
        labels_by_stem.setdefault(_stem(label), []).append(label)
    pairs, unmatched = [], []
    for image in sorted(images, key=_natural_key):
        stem = _stem(image)
        matches = [label for name in (stem, *(stem + s for s in LABEL_SUFFIXES))
                   for label in labels_by_stem.get(name, [])]
        if len(matches) > 1:
            raise DatasetError(f"{image.name}: several labels match: {', '.join(sorted(p.name for p in matches))}")
        if matches:
            pairs.append((image, matches[0]))
        else:
            unmatched.append(image.name)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise DatasetError(f"{len(unmatched)} image(s) in {image_dir} have no label in {label_dir}: {shown}")
    return pairs


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


def _file_suffix(path: Path) -> str:
    """The lower-case extension, with .nii.gz kept whole."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[:len(path.name) - len(_file_suffix(path))]


def _natural_key(path: Path) -> tuple[list, str]:
    """Case2 before Case10: runs of digits compare as numbers (re.split puts them at odd
    indices); the name itself breaks ties."""
    parts = re.split(r"(\d+)", path.name.casefold())
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], path.name


def _existing_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if _file_suffix(path) not in suffixes:
        raise InvalidImageError(f"{path}: unsupported {what} format {_file_suffix(path)!r}, "
                                f"expected one of {', '.join(suffixes)}")
    return path


def _data_files(directory: str | os.PathLike, what: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    # Hidden files are skipped: macOS leaves '._Case1.png' companions that are not images.
    files = [p for p in directory.iterdir()
             if p.is_file() and not p.name.startswith(".") and _file_suffix(p) in DATA_SUFFIXES]
    if not files:
        raise DatasetError(f"no {what} files ({', '.join(DATA_SUFFIXES)}) in {directory}")
    return files


@contextmanager
def _decoding(path: Path):
    """Turns a decoder's error on a corrupt or truncated file into one that names the file."""
    try:
        yield
    except PermissionError:
        raise  # the file system refused; the contents may be fine
    except _CORRUPT_FILE_ERRORS as err:
        raise InvalidImageError(f"{path}: cannot read the file, it is corrupt or not what its "
                                f"extension says ({type(err).__name__}: {err})") from err


def _read_npy(path: Path) -> np.ndarray:
    # read_array reads the NPY format only, where np.load would also open a renamed .npz.
    with _decoding(path), open(path, "rb") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_pillow(path: Path, fmt: str) -> np.ndarray:
    with _decoding(path), Image.open(path, formats=[fmt]) as img:
        frames, mode = getattr(img, "n_frames", 1), img.mode
        pixels = np.array(img.convert(_WITHOUT_ALPHA[mode]) if mode in _WITHOUT_ALPHA else img)
    if frames > 1:
        # A page stack is a volume; reading its first page alone would drop data silently.
        raise InvalidImageError(f"{path}: has {frames} frames, an image must have one")
    if mode not in _KEPT_MODES and mode not in _WITHOUT_ALPHA:
        raise InvalidImageError(f"{path}: unsupported pixel mode {mode!r}")
    return pixels


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    # mmap=False reads the data now, so a truncated file fails here and the array does not
    # depend on the file staying in place.
    with _decoding(path):
        img = nib.load(path, mmap=False)
        data = np.asanyarray(img.dataobj)
    return data, tuple(float(zoom) for zoom in img.header.get_zooms()[:3])


def _write_png_atomically(path: Path, pixels: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "xb") as f:
        Image.fromarray(pixels).save(f, format="PNG")


def _native_numeric(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)  # a 1-bit mask as 0/1 class ids
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageTypeError(f"{path}: dtype {array.dtype} is not a real numeric type")
    # torch refuses byte-swapped arrays, and big-endian NPY and NIfTI files exist.
    return array.astype(array.dtype.newbyteorder("="), copy=False)


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
