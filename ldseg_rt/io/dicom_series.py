"""DICOM series in: a folder (or a .zip of one) of single-frame slices read, with pydicom,
into a `Volume` whose affine places every voxel where the files say it is.

Slices are ordered by their position along the slice normal, never by file name or
InstanceNumber, which scanners and anonymisers do not keep in order; the slice step is the
distance between consecutive positions (SliceThickness is the slab, not the step). A series
whose slices do not form one regular grid (a gap, uneven steps, mixed orientations, a tilted
gantry) is refused rather than resampled silently.

    volume = read_dicom_series("study/", SeriesRule.parse("modality=MR,description=T1"))
"""
from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MediaStorageDirectoryStorage

from ..errors import DatasetError, InvalidArgumentError, InvalidImageError, SeriesNotSelectedError
from .files import native_numeric
from .volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

_PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FLOAT32_EXACT = 2.0 ** 24  # beyond this, float32 no longer holds every integer
_STEP_TOLERANCE = 0.01  # relative deviation of a slice step from the median step
_ORIENTATION_TOLERANCE = 1e-4  # scanners write direction cosines with a few decimals
_IN_PLANE_TOLERANCE = 0.05  # in-plane offset between slices, as a fraction of a pixel


@dataclass(frozen=True)
class SeriesRule:
    """Which series to read when a folder holds several; every given criterion must hold.

    modality: the Modality (MR, CT, ...), case-insensitive; description: a regular expression
    searched in SeriesDescription; largest: of what is left, the series with most images."""
    modality: str | None = None
    description: str | None = None
    largest: bool = False

    def __post_init__(self):
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as err:
                raise InvalidArgumentError(f"series rule: description {self.description!r} is not a "
                                           f"valid regular expression ({err})") from err

    @classmethod
    def parse(cls, text: str) -> "SeriesRule":
        """A rule from its command-line form, e.g. "modality=MR,description=T1.*,largest".
        Only a comma before "key=" or "largest" separates, so a regex may hold commas."""
        fields: dict = {}
        for part in re.split(r",(?=\s*\w+\s*=|\s*largest\s*(?:,|$))", text.strip()) if text.strip() else []:
            key, has_value, value = (s.strip() for s in part.partition("="))
            if key == "largest":
                if has_value and value.lower() not in ("true", "yes", "1", "false", "no", "0"):
                    raise InvalidArgumentError(f"series rule {text!r}: largest takes no value or true/false, "
                                               f"got {value!r}")
                fields["largest"] = not has_value or value.lower() in ("true", "yes", "1")
            elif key in ("modality", "description"):
                if not value:
                    raise InvalidArgumentError(f"series rule {text!r}: {key} needs a value, as in {key}=...")
                fields[key] = value
            else:
                raise InvalidArgumentError(f"series rule {text!r}: unknown key {key!r}; "
                                           f"use modality=..., description=<regex>, largest")
        return cls(**fields)


@dataclass
class Series:
    """The DICOM objects of one series (one SeriesInstanceUID and frame of reference)."""
    uid: str
    modality: str
    description: str
    datasets: list = field(default_factory=list)  # pydicom Datasets, in no particular order
    files: list[str] = field(default_factory=list)  # where each dataset was read from
    frame_of_reference: str | None = None
    location: str = ""  # the folder or .zip searched

    def summary(self) -> str:
        return f"{self.uid} ({self.modality} {self.description!r}, {len(self.datasets)} objects)"


# --- finding series --------------------------------------------------------------------------

def _dcmread(source, name: str):
    """The dataset in a file; None where it is not DICOM (no 'DICM' file header)."""
    try:
        return pydicom.dcmread(source, force=False)
    except InvalidDicomError:
        log.debug("%s: not a DICOM file, skipped", name)
        return None
    except (PermissionError, IsADirectoryError):
        raise  # the file system refused; the file may be fine
    except Exception as err:  # pydicom's parser raises many kinds on a damaged file
        raise InvalidImageError(f"{name}: cannot read the DICOM file, it is corrupt or truncated "
                                f"({type(err).__name__}: {err})") from err


def _series_member(source, name: str):
    """The dataset in a file if it belongs to a series; None for non-DICOM and a DICOMDIR."""
    ds = _dcmread(source, name)
    if ds is None:
        return None
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        log.debug("%s: a DICOMDIR index, skipped", name)
        return None
    if "SeriesInstanceUID" not in ds:
        raise InvalidImageError(f"{name}: a DICOM file without SeriesInstanceUID; it is truncated or "
                                f"not part of a series")
    return ds


def _visible(parts) -> bool:
    return not any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _folder_datasets(folder: Path):
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible([d]))
        for name in sorted(names):
            path = Path(root, name)
            if _visible([name]) and path.is_file():
                ds = _series_member(path, str(path))
                if ds is not None:
                    yield ds, str(path)


def _zip_datasets(archive: Path):
    # Members are read into memory: nothing is extracted, so no member path can escape.
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir() or not _visible(Path(info.filename).parts):
                    continue
                name = f"{archive}:{info.filename}"
                ds = _series_member(io.BytesIO(zf.read(info)), name)
                if ds is not None:
                    yield ds, name
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as err:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise DatasetError(f"{archive}: cannot read the zip archive ({type(err).__name__}: {err})") from err


def find_series(path) -> list[Series]:
    """Every DICOM series in a folder (searched recursively, hidden files skipped) or a .zip.
    Files that are not DICOM are skipped; a damaged DICOM file is an InvalidImageError."""
    path = Path(path)
    if path.is_dir():
        found = _folder_datasets(path)
    elif path.is_file() and path.suffix.lower() == ".zip":
        found = _zip_datasets(path)
    elif not path.exists():
        raise FileNotFoundError(f"DICOM folder not found: {path}")
    else:
        raise DatasetError(f"{path}: a DICOM series is read from a folder or a .zip of one")

    by_uid: dict[str, list] = {}
    for ds, name in found:
        by_uid.setdefault(str(ds.SeriesInstanceUID), []).append((ds, name))
    if not by_uid:
        raise DatasetError(f"{path}: no DICOM files found")

    series = []
    for uid, members in by_uid.items():
        frames = sorted({_frame(ds) for ds, _ in members} - {None})
        if len(frames) <= 1:
            # An object without a frame of reference (a report) stays with its series' images.
            series.append(_series(uid, members, frames[0] if frames else None, path))
            continue
        log.warning("%s: series %s spans %d frames of reference; each is read as its own series",
                    path, uid, len(frames))
        for frame in [*frames, None]:
            group = [(ds, name) for ds, name in members if _frame(ds) == frame]
            if group:
                series.append(_series(uid, group, frame, path))
    return series


def _frame(ds) -> str | None:
    return str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None


def _series(uid: str, members: list, frame: str | None, location: Path) -> Series:
    first = members[0][0]
    return Series(uid=uid, modality=str(first.get("Modality", "") or ""),
                  description=str(first.get("SeriesDescription", "") or ""),
                  datasets=[ds for ds, _ in members], files=[name for _, name in members],
                  frame_of_reference=frame, location=str(location))


def select_series(series: list[Series], rule: SeriesRule | None = None) -> Series:
    """The one series the rule picks (without a rule, the only series there is)."""
    if not series:
        raise DatasetError("no DICOM series found")
    where = series[0].location
    if rule is None:
        if len(series) == 1:
            return series[0]
        left = series
    else:
        left = list(series)
        if rule.modality is not None:
            left = [s for s in left if s.modality.upper() == rule.modality.upper()]
        if rule.description is not None:
            left = [s for s in left if re.search(rule.description, s.description)]
        if rule.largest and left:
            most = max(len(s.datasets) for s in left)
            left = [s for s in left if len(s.datasets) == most]
        if not left:
            raise SeriesNotSelectedError(f"{where}: no DICOM series matches {rule}; found:\n" + _listing(series))
        if len(left) == 1:
            return left[0]
    raise DatasetError(f"{where}: {len(left)} DICOM series {'match ' + str(rule) if rule else 'found'}:\n"
                       + _listing(left) + "\npass a series rule to choose one, e.g. "
                       "\"modality=MR,description=<regex>,largest\"")


def _listing(series: list[Series]) -> str:
    return "\n".join(f"  {s.uid}  modality={s.modality or '?'}  description={s.description!r}  "
                     f"{len(s.datasets)} objects" for s in series)


# --- pixels and geometry ---------------------------------------------------------------------

@contextmanager
def _decoding(name: str, ds):
    try:
        yield
    except Exception as err:  # truncated data, an unsupported compression, a missing plugin...
        syntax = ds.file_meta.get("TransferSyntaxUID")
        raise InvalidImageError(f"{name}: cannot decode the pixel data (transfer syntax "
                                f"{syntax.name if syntax else 'unknown'}); the file is corrupt, truncated "
                                f"or compressed in a way this installation cannot read "
                                f"({type(err).__name__}: {err})") from err


def _check_image(ds, name: str) -> None:
    if not any(element in ds for element in _PIXEL_ELEMENTS):
        sop = ds.get("SOPClassUID")
        raise InvalidImageError(f"{name}: {sop.name if sop else 'a DICOM'} object without pixel data, "
                                f"not an image (or the file is truncated)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InvalidImageError(f"{name}: a multi-frame object ({ds.NumberOfFrames} frames); only "
                                f"single-frame images are read")


def _rescaled(ds, name: str) -> np.ndarray:
    """The stored values through the modality LUT or RescaleSlope/Intercept, as float64."""
    with _decoding(name, ds):
        stored = ds.pixel_array
    if stored.shape != (ds.Rows, ds.Columns):
        raise InvalidImageError(f"{name}: pixel data of shape {stored.shape}, expected "
                                f"(Rows, Columns) = ({ds.Rows}, {ds.Columns})")
    # float64 arithmetic also turns big-endian stored values native.
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def _float_dtype(values: np.ndarray):
    return np.float64 if values.size and np.abs(values).max() > _FLOAT32_EXACT else np.float32


@dataclass
class _Slice:
    ds: object
    name: str
    row_dir: np.ndarray  # LPS direction in which the column index grows
    col_dir: np.ndarray  # LPS direction in which the row index grows
    spacing: np.ndarray  # PixelSpacing: [between rows, between columns]
    origin: np.ndarray  # ImagePositionPatient: LPS centre of the first pixel
    position: float = 0.0  # along the slice normal


def _geometry(ds, name: str) -> _Slice:
    _check_image(ds, name)
    missing = [k for k in ("Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient",
                           "PixelSpacing") if not ds.get(k)]
    if missing:
        raise InvalidImageError(f"{name}: no {', '.join(missing)}; the slice cannot be placed in the patient")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InvalidImageError(f"{name}: a colour image ({ds.SamplesPerPixel} samples per pixel); "
                                f"a volume is read from greyscale slices")
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient], np.float64)
    spacing = np.array([float(v) for v in ds.PixelSpacing], np.float64)
    origin = np.array([float(v) for v in ds.ImagePositionPatient], np.float64)
    if orientation.shape != (6,) or spacing.shape != (2,) or origin.shape != (3,):
        raise InvalidImageError(f"{name}: ImageOrientationPatient needs 6 values, PixelSpacing 2 and "
                                f"ImagePositionPatient 3")
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
            or abs(row_dir @ col_dir) > 1e-3 or (spacing <= 0).any()):
        raise InvalidImageError(f"{name}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal "
                                f"unit vectors, or PixelSpacing {spacing.tolist()} is not positive")
    return _Slice(ds, name, row_dir, col_dir, spacing, origin)


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if (s.ds.Rows, s.ds.Columns) != (first.ds.Rows, first.ds.Columns):
            problem = (f"Rows x Columns {s.ds.Rows} x {s.ds.Columns} differs from "
                       f"{first.ds.Rows} x {first.ds.Columns}")
        elif not (np.allclose(s.row_dir, first.row_dir, atol=_ORIENTATION_TOLERANCE)
                  and np.allclose(s.col_dir, first.col_dir, atol=_ORIENTATION_TOLERANCE)):
            problem = (f"ImageOrientationPatient {[*s.row_dir, *s.col_dir]} differs from "
                       f"{[*first.row_dir, *first.col_dir]}")
        elif not np.allclose(s.spacing, first.spacing, rtol=1e-4, atol=0):
            problem = f"PixelSpacing {s.spacing.tolist()} differs from {first.spacing.tolist()}"
        else:
            continue
        raise InvalidImageError(f"{s.name}: {problem} in {first.name}; the series' slices do not form one volume")


def _check_steps(slices: list[_Slice], normal: np.ndarray, where: str) -> None:
    """Refuse stacks that are not a regular grid: duplicates, gaps, uneven steps, shear."""
    positions = np.array([s.position for s in slices])
    steps = np.diff(positions)
    median = float(np.median(steps))
    for a, b, step in zip(slices, slices[1:], steps):
        if step <= max(1e-4, 1e-3 * median):
            raise InvalidImageError(f"{a.name} and {b.name} lie at the same position {a.position:.4f} mm along the "
                                    f"slice normal; the series holds more than one volume (echoes, phases?)")
    problems = []
    for a, b, step in zip(slices, slices[1:], steps):
        if abs(step - median) <= _STEP_TOLERANCE * median:
            continue
        ratio = step / median
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= _STEP_TOLERANCE * round(ratio):
            problems.append(f"{round(ratio) - 1} slice(s) missing between positions {a.position:.4f} and "
                            f"{b.position:.4f} mm ({b.name} follows {a.name})")
        else:
            problems.append(f"a step of {step:.4f} mm between positions {a.position:.4f} and {b.position:.4f} mm")
    if problems:
        raise InvalidImageError(f"{where}: slices are not "
                                f"evenly spaced (median step {median:.4f} mm): " + "; ".join(problems))
    # A tilted gantry shifts each slice in-plane; normal * step would then misplace every voxel.
    first = slices[0]
    for s in slices[1:]:
        offset = s.origin - first.origin - normal * (s.position - first.position)
        if np.linalg.norm(offset) > _IN_PLANE_TOLERANCE * first.spacing.min():
            raise InvalidImageError(f"{s.name}: offset in-plane by {np.linalg.norm(offset):.4f} mm from the line "
                                    f"through {first.name} along the slice normal (a tilted gantry?); "
                                    f"the slices do not form a rectilinear volume")


def series_volume(series: Series) -> Volume:
    """The series' slices as one volume: array[i = column, j = row, k = slice along the
    normal], rescaled to float32 (float64 where float32 cannot hold the values), and its
    RAS affine."""
    if not series.datasets:
        raise DatasetError(f"series {series.uid} in {series.location} holds no objects")
    slices = [_geometry(ds, name) for ds, name in zip(series.datasets, series.files)]
    _check_consistent(slices)
    first = slices[0]
    normal = np.cross(first.row_dir, first.col_dir)
    normal /= np.linalg.norm(normal)  # the cosines carry only a few decimals
    for s in slices:
        s.position = float(s.origin @ normal)
    slices.sort(key=lambda s: s.position)
    if len(slices) > 1:
        _check_steps(slices, normal, f"series {series.uid} in {series.location}")
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    else:
        step = float(first.ds.get("SliceThickness") or 0) or 1.0
        if step <= 0:
            step = 1.0
        log.info("%s: a single slice; its thickness along k is taken as %g mm", first.name, step)

    stack = np.empty((len(slices), first.ds.Rows, first.ds.Columns), np.float32)
    for k, s in enumerate(slices):
        values = _rescaled(s.ds, s.name)
        if stack.dtype == np.float32 and _float_dtype(values) == np.float64:
            stack = stack.astype(np.float64)  # float32 would round these values
        stack[k] = values

    corner = slices[0]  # the first slice along the normal: voxel (0, 0, 0)
    lps = np.eye(4)
    lps[:3, 0] = corner.row_dir * corner.spacing[1]  # i: along a row, the column index grows
    lps[:3, 1] = corner.col_dir * corner.spacing[0]  # j: down a column, the row index grows
    lps[:3, 2] = normal * step
    lps[:3, 3] = corner.origin
    description = f"DICOM series {series.uid} ({series.modality} {series.description}) in {series.location}"
    # (k, row, column) -> (i = column, j = row, k)
    return Volume(stack.transpose(2, 1, 0), LPS_TO_RAS @ lps, [s.ds for s in slices], description)


def read_dicom_series(path, rule: SeriesRule | None = None) -> Volume:
    """The volume of the series in a folder or .zip that `rule` picks (or the only one)."""
    return series_volume(select_series(find_series(path), rule))


def read_dicom_image(path) -> np.ndarray:
    """A single-frame 2-D DICOM file's pixels: (H, W) greyscale, rescaled to float32 (float64
    where needed), or (H, W, 3) RGB as stored, native byte order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    ds = _dcmread(path, str(path))
    if ds is None:
        raise InvalidImageError(f"{path}: not a DICOM file (no 'DICM' file header)")
    _check_image(ds, str(path))
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            log.warning("%s: MONOCHROME1, displayed inverted; the values are returned as stored", path)
        values = _rescaled(ds, str(path))
        return values.astype(_float_dtype(values))
    if samples == 3:
        with _decoding(str(path), ds):
            pixels = ds.pixel_array  # pydicom turns YBR into RGB
        return native_numeric(pixels, path)
    raise InvalidImageError(f"{path}: {samples} samples per pixel; expected 1 (greyscale) or 3 (RGB)")

