"""The cases of a batch: what `python -m ldseg_rt segment INPUT...` is given, turned into a list
of named cases, and each case read into a 2-D image or a Volume.

An INPUT is a file (NIfTI volume; PNG, BMP, TIFF or NPY image; a single-frame DICOM image;
a .zip of one DICOM series), a folder holding DICOM files (one series case), a folder of cases
(each file or sub-folder inside is one), or a .csv list of such paths (a 'path' column, or
the first column; relative paths are relative to the CSV).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import IMAGE_SUFFIXES, file_suffix
from .volume import Volume
from .nifti import NIFTI_SUFFIXES

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class Case:
    name: str  # unique within the batch: the output folder's name
    path: Path
    kind: str  # 'image', 'nifti', 'dicom-image' or 'dicom-series'


def _is_dicom(path: Path) -> bool:
    from pydicom.misc import is_dicom
    return path.is_file() and (file_suffix(path) in DICOM_SUFFIXES or is_dicom(path))


def _kind(path: Path) -> str | None:
    """What a path holds as a case, or None if it is not one."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        return "dicom-series" if any(_is_dicom(p) for p in entries if p.is_file()) else None
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".zip":
        return "dicom-series"
    if _is_dicom(path):
        return "dicom-image"
    return None


def _stem(path: Path) -> str:
    return path.name[:len(path.name) - len(file_suffix(path))] if path.is_file() else path.name


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and row[0].strip()]
    if not rows:
        raise DatasetError(f"{path}: the case list is empty")
    column = rows[0].index("path") if "path" in rows[0] else 0
    body = rows[1:] if "path" in rows[0] else rows
    return [(path.parent / row[column].strip()) for row in body]


def find_cases(inputs) -> list[Case]:
    """The cases the inputs name, in the order given (a folder's cases in name order)."""
    paths = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DatasetError(f"input {str(path)!r} does not exist")
        paths += _from_csv(path) if path.is_file() and path.suffix.lower() == ".csv" else [path]
    cases, seen = [], {}
    for path in paths:
        kind = _kind(path) if path.exists() else None
        if kind is None and path.is_dir():
            inside = [(p, _kind(p)) for p in sorted(path.iterdir())]
            found = [(p, k) for p, k in inside if k is not None]
            if not found:
                raise DatasetError(f"{path}: no cases inside (DICOM series, NIfTI volumes or images)")
        else:
            found = [(path, kind)]
        for case_path, case_kind in found:
            if case_kind is None:
                case_kind = "missing" if not case_path.exists() else "unknown"
            name = _stem(case_path)
            seen[name] = seen.get(name, 0) + 1
            cases.append(Case(name if seen[name] == 1 else f"{name}-{seen[name]}", case_path, case_kind))
    return cases


def read_case(case: Case, rule=None) -> np.ndarray | Volume:
    """The case's pixels: a 2-D image (H, W[, C]) or a Volume. rule: the series selection rule
    for a folder holding several DICOM series."""
    if case.kind == "nifti":
        from .nifti import read_nifti
        return read_nifti(case.path)
    if case.kind == "image":
        from .images import read_image
        return read_image(case.path)
    if case.kind == "dicom-image":
        from .dicom_series import read_dicom_image
        return read_dicom_image(case.path)
    if case.kind == "dicom-series":
        from .dicom_series import read_dicom_series
        return read_dicom_series(case.path, rule)
    if case.kind == "missing":
        raise DatasetError(f"{case.path}: no such file or folder")
    raise DatasetError(f"{case.path}: not a case ldseg_rt reads (a DICOM series folder or .zip, a NIfTI volume, "
                       f"a PNG, BMP, TIFF, NPY or DICOM image)")

