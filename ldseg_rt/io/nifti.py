"""3-D volumes: NIfTI read as a Volume with its affine and written back on exactly the same
grid, NIfTI or NPY read as an array with its voxel spacing (for training), and slicing to 2-D.

Volumes are (I, J, K) arrays as stored. Errors as for images (ldseg_rt.io.images).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InvalidArgumentError, InvalidImageError
from .atomic import replacing
from .files import VOLUME_SUFFIXES, decoding, existing_file, file_suffix, native_numeric, read_npy
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3-D NIfTI (.nii, .nii.gz) or NPY volume as it is stored, and its voxel spacing
    (the header's zooms; 1.0 per axis for NPY, which has none)."""
    path = existing_file(path, VOLUME_SUFFIXES, "volume")
    if file_suffix(path) == ".npy":
        data = read_npy(path)
        if data.ndim != 3:
            raise InvalidImageError(f"{path}: volume must be 3-D, got shape {data.shape}")
        return native_numeric(data, path), (1.0, 1.0, 1.0)
    volume = read_nifti(path)
    return volume.array, tuple(float(zoom) for zoom in volume.source.get_zooms()[:3])


def read_nifti(path: str | os.PathLike) -> Volume:
    """A 3-D NIfTI volume with its affine (voxel -> RAS mm, the sform where set, else the
    qform) and its header as the Volume's source."""
    path = existing_file(path, NIFTI_SUFFIXES, "NIfTI volume")
    # mmap=False reads the data now, so a truncated file fails here and the array does not
    # depend on the file staying in place.
    with decoding(path):
        img = nib.load(path, mmap=False)
        data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:  # a 3-D volume stored with a singleton time axis
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidImageError(f"{path}: volume must be 3-D, got shape {data.shape}")
    return Volume(native_numeric(data, path), img.affine, img.header, description=str(path))


def write_nifti(path: str | os.PathLike, array: np.ndarray, like: Volume) -> Path:
    """Write `array` ((I, J, K), or (..., I, J, K) with leading axes moved last as NIfTI
    stores extra dimensions) on `like`'s grid, atomically: the affine is `like`'s, in the
    sform and the qform, with the codes of `like`'s NIfTI header where it has one."""
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InvalidArgumentError(f"{path}: write_nifti writes .nii or .nii.gz files")
    array = np.asarray(array)
    if array.shape[array.ndim - 3:] != like.array.shape:
        raise InvalidArgumentError(f"{path}: array of shape {array.shape} does not end in the volume's grid "
                                   f"{like.array.shape}")
    data = np.moveaxis(array, tuple(range(array.ndim - 3)), tuple(range(3, array.ndim)))
    header = like.source.copy() if isinstance(like.source, nib.Nifti1Header) else nib.Nifti1Header()
    sform_code = int(header["sform_code"]) or 1  # 1: scanner coordinates
    qform_code = int(header["qform_code"]) or 1
    image = nib.Nifti1Image(data, like.affine, header)
    image.set_sform(like.affine, code=sform_code)
    image.set_qform(like.affine, code=qform_code)
    image.header.set_data_dtype(data.dtype)
    data = image.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: the same result, the same bytes
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return path


def volume_slices(volume: np.ndarray, axis: int = 2) -> list[np.ndarray]:
    """The 2-D slices of a 3-D volume along `axis` (0, 1, 2 or negative), as views."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidImageError(f"volume must be 3-D, got shape {volume.shape}")
    if axis not in range(-3, 3):
        raise InvalidArgumentError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    return list(np.moveaxis(volume, axis, 0))
