"""What the readers share: the formats by file extension, and turning a decoder's failure on
a corrupt file into an error that names the file."""
from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from PIL import Image

from ..errors import ImageTypeError, InvalidImageError

# Pillow is told the format, so a file whose contents do not match its extension (say a JPEG
# named .png, whose lossy compression would corrupt label values) is refused, not decoded.
PILLOW_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
IMAGE_SUFFIXES = (*PILLOW_FORMATS, ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")
DATA_SUFFIXES = (*IMAGE_SUFFIXES, ".nii", ".nii.gz")
# What Pillow, numpy and nibabel raise for a corrupt or truncated file.
_CORRUPT_FILE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
                        Image.DecompressionBombError, ImageFileError, HeaderDataError)


def file_suffix(path: Path) -> str:
    """The lower-case extension, with .nii.gz kept whole."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def existing_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if file_suffix(path) not in suffixes:
        raise InvalidImageError(f"{path}: unsupported {what} format {file_suffix(path)!r}, "
                                f"expected one of {', '.join(suffixes)}")
    return path


@contextmanager
def decoding(path: Path):
    """Turns a decoder's error on a corrupt or truncated file into one that names the file."""
    try:
        yield
    except PermissionError:
        raise  # the file system refused; the contents may be fine
    except _CORRUPT_FILE_ERRORS as err:
        raise InvalidImageError(f"{path}: cannot read the file, it is corrupt or not what its "
                                f"extension says ({type(err).__name__}: {err})") from err


def read_npy(path: Path) -> np.ndarray:
    # read_array reads the NPY format only, where np.load would also open a renamed .npz.
    with decoding(path), open(path, "rb") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def native_numeric(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)  # a 1-bit mask as 0/1 class ids
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageTypeError(f"{path}: dtype {array.dtype} is not a real numeric type")
    # torch refuses byte-swapped arrays, and big-endian NPY and NIfTI files exist.
    return array.astype(array.dtype.newbyteorder("="), copy=False)
