"""Reading 3-D volumes (NIfTI, NPY) with their voxel spacing, and slicing them to 2-D.

Volumes are (X, Y, Z) arrays as stored. Errors as for images (ldseg_rt.io.images).
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InvalidArgumentError, InvalidImageError
from .files import VOLUME_SUFFIXES, decoding, existing_file, file_suffix, native_numeric, read_npy


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3-D NIfTI (.nii, .nii.gz) or NPY volume as it is stored, and its voxel spacing
    (the header's zooms; 1.0 per axis for NPY, which has none)."""
    path = existing_file(path, VOLUME_SUFFIXES, "volume")
    if file_suffix(path) == ".npy":
        data, spacing = read_npy(path), (1.0, 1.0, 1.0)
    else:
        data, spacing = _read_nifti(path)
    if data.ndim != 3:
        raise InvalidImageError(f"{path}: volume must be 3-D, got shape {data.shape}")
    return native_numeric(data, path), spacing


def volume_slices(volume: np.ndarray, axis: int = 2) -> list[np.ndarray]:
    """The 2-D slices of a 3-D volume along `axis` (0, 1, 2 or negative), as views."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidImageError(f"volume must be 3-D, got shape {volume.shape}")
    if axis not in range(-3, 3):
        raise InvalidArgumentError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    return list(np.moveaxis(volume, axis, 0))


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    # mmap=False reads the data now, so a truncated file fails here and the array does not
    # depend on the file staying in place.
    with decoding(path):
        img = nib.load(path, mmap=False)
        data = np.asanyarray(img.dataobj)
    return data, tuple(float(zoom) for zoom in img.header.get_zooms()[:3])
