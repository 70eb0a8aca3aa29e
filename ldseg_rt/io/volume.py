"""A volume with its geometry: the voxels and the affine that places them in the patient.

The convention is NIfTI's, whatever the file: `array[i, j, k]` and an affine mapping
(i, j, k, 1) to RAS millimetres. A DICOM series reads as i = column index, j = row index,
k = slice index in the order of the slices along the slice normal, with the affine its
ImageOrientationPatient / PixelSpacing / ImagePositionPatient give (LPS turned to RAS by
negating the first two rows). Results are written on exactly the same grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidImageError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray  # (I, J, K) voxels
    affine: np.ndarray  # (4, 4) float64: voxel (i, j, k, 1) -> RAS mm
    source: object = None  # what it was read from: the sorted DICOM datasets of a series, a NIfTI header, or None
    description: str = ""  # where it came from, in words (file, series), for messages

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise InvalidImageError(f"{self.description or 'volume'}: a volume is 3-D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4) or not np.isfinite(self.affine).all() or abs(np.linalg.det(self.affine)) < 1e-12:
            raise InvalidImageError(f"{self.description or 'volume'}: the affine must be a finite, invertible 4x4 "
                                    f"matrix, got {self.affine.tolist()}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def like(self, array: np.ndarray) -> "Volume":
        """Other voxels on the same grid: same affine, source and description."""
        if array.shape[:3] != self.array.shape:
            raise InvalidImageError(f"result of shape {array.shape} does not fit the volume's grid {self.array.shape}")
        return Volume(array, self.affine.copy(), self.source, self.description)

    def through_plane_axis(self) -> int:
        """The voxel axis with the largest spacing (the slice direction of most acquisitions);
        k on a tie, as a DICOM series is stacked along k."""
        spacing = np.round(self.spacing, 6)
        return int(max(range(3), key=lambda axis: (spacing[axis], axis)))
