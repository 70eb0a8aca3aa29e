"""Results as DICOM objects (highdicom): a Segmentation of the label map, a fractional
Segmentation of the class probabilities, and a Parametric Map of the uncertainty.

Every output is a new series (new Series/SOP Instance UIDs) in the source's study and frame of
reference, one frame per source slice: the (I, J, K) arrays of a `Volume` read from a DICOM
series have i = column, j = row, k = slice in the order of `Volume.source`, so frame k is
`array[:, :, k].T` and is paired with `sources[k]`, whose position and orientation it takes.
highdicom pairs frames with source images by list position and does not sort them, so
`sources` must be passed in that same k order.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..errors import InvalidArgumentError, InvalidImageError
from .atomic import replacing

MANUFACTURER = "ldseg_rt"
MAX_FRACTIONAL_VALUE = 255  # probabilities are stored as round(p * 255) in 8 bits
ROUNDING = 1e-5  # how far float32 rounding may take a probability past [0, 1]
MAX_LT_CHARACTERS = 10240  # Image Comments is an LT
WARNINGS_NOTE = "warnings in Image Comments"
# What a segment is: generic codes from CID 7150 / 7151, as the classes are configurable.
SEGMENT_CATEGORY = codes.SCT.Tissue
SEGMENT_TYPE = codes.SCT.Tissue
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence
# Attributes without which the sources cannot be referenced or the frames placed.
REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                              "FrameOfReferenceUID", "Rows", "Columns", "ImagePositionPatient",
                              "ImageOrientationPatient", "PixelSpacing")


def _default_algorithm() -> tuple[str, str]:
    from .. import __version__  # here, not at import: ldseg_rt/__init__ may still be importing us
    return ("ldseg_rt", __version__)


def _check_sources(sources: Sequence[Dataset], shape: tuple[int, ...], what: str) -> list[Dataset]:
    """The sources must be one usable image series whose slices match `shape` = (I, J, K)."""
    sources = list(sources)
    columns, rows, slices = shape
    if len(sources) != slices:
        raise InvalidArgumentError(f"{what} has {slices} slices (K) but {len(sources)} source datasets were given")
    for k, source in enumerate(sources):
        missing = [name for name in REQUIRED_SOURCE_ATTRIBUTES if name not in source]
        if missing:
            raise InvalidImageError(f"source dataset {k} is not a usable image slice: it lacks {', '.join(missing)}")
        if (source.Rows, source.Columns) != (rows, columns):
            raise InvalidArgumentError(f"{what} slices are {columns} columns (I) x {rows} rows (J) but source "
                                       f"dataset {k} has Columns {source.Columns} and Rows {source.Rows}")
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if len({str(source[name].value) for source in sources}) != 1:
            raise InvalidImageError(f"the source datasets are not one series: their {name} differ")
    return sources


def _check_class_names(class_names: Sequence[str], classes: int | None = None) -> list[str]:
    """`classes` = C, background included, where the data fixes it; the names become segment
    labels (at most 64 characters)."""
    class_names = [str(name) for name in class_names]
    if classes is not None and len(class_names) != classes:
        raise InvalidArgumentError(f"{len(class_names)} class names given for {classes} classes (background first)")
    if len(class_names) < 2:
        raise InvalidArgumentError("at least one foreground class is needed besides the background")
    too_long = [name for name in class_names if not 0 < len(name) <= 64]
    if too_long:
        raise InvalidArgumentError(f"class names must be 1 to 64 characters (DICOM segment labels): {too_long}")
    return class_names


def _output_identity(sources: list[Dataset], algorithm: tuple[str, str] | None) -> dict:
    """The arguments every highdicom object here shares: new UIDs, the producing software."""
    name, version = algorithm or _default_algorithm()
    source_series = sources[0].get("SeriesNumber")
    return dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1,
                # a number of its own, near the source's, so viewers list the result beside it
                series_number=int(source_series) + 1000 if source_series not in (None, "") else 1000,
                manufacturer=MANUFACTURER, manufacturer_model_name=str(name), software_versions=str(version),
                device_serial_number="none")


def _segment_descriptions(class_names: list[str], algorithm: tuple[str, str] | None) -> list:
    name, version = algorithm or _default_algorithm()
    identification = hd.AlgorithmIdentificationSequence(name=str(name), version=str(version), family=ALGORITHM_FAMILY)
    return [hd.seg.SegmentDescription(segment_number=number, segment_label=class_names[number],
                                      segmented_property_category=SEGMENT_CATEGORY,
                                      segmented_property_type=SEGMENT_TYPE,
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                      algorithm_identification=identification)
            for number in range(1, len(class_names))]


def _save(path, dataset: Dataset, warnings: Sequence[str] = ()) -> Path:
    """Write `dataset` whole or not at all; the result's warnings go with it, so that a reader
    who sees only the DICOM object still learns why it may not be trustworthy."""
    if warnings:
        dataset.ImageComments = "; ".join(map(str, warnings))[:MAX_LT_CHARACTERS]
        dataset.ContentDescription = f"{dataset.ContentDescription} ({WARNINGS_NOTE})"[:64]
    with replacing(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_segmentation(path, labels: np.ndarray, sources: Sequence[Dataset], class_names: Sequence[str],
                       probabilities: np.ndarray | None = None,
                       algorithm: tuple[str, str] | None = None, warnings: Sequence[str] = ()) -> Path:
    """Write the label map `labels` (I, J, K) of class ids 0..C-1 (0 = background) as a BINARY
    DICOM Segmentation with one segment per foreground class (segment number = class id,
    label = class name), derived from `sources`, the K source slices in k order.

    Given `probabilities` (C, I, J, K), a FRACTIONAL (probability) Segmentation of the
    foreground classes is written instead (see `write_probability_segmentation`).
    `algorithm` = (name, version), ldseg_rt's own by default; `warnings`, the result's, go into
    Image Comments (and a note into Content Description). Returns `path`."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InvalidArgumentError(f"labels must be a 3-D (I, J, K) array, got shape {labels.shape}")
    if probabilities is not None:
        if np.shape(probabilities)[1:] != labels.shape:
            raise InvalidArgumentError(f"probabilities of shape {np.shape(probabilities)} do not fit labels of "
                                       f"shape {labels.shape}: expected (C, {', '.join(map(str, labels.shape))})")
        return write_probability_segmentation(path, probabilities, sources, class_names, algorithm=algorithm,
                                              warnings=warnings)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InvalidArgumentError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    sources = _check_sources(sources, labels.shape, "labels")
    class_names = _check_class_names(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise InvalidArgumentError(f"labels hold class ids {int(labels.min())}..{int(labels.max())} but only "
                                   f"{len(class_names)} class names were given (ids 0..{len(class_names) - 1})")
    # label-map style: each value v > 0 is segment v; frames (K, rows J, columns I)
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=frames,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                              segment_descriptions=_segment_descriptions(class_names, algorithm),
                              omit_empty_frames=False,  # every slice of every segment, so readers get the full grid
                              content_label="LABELS", content_description="ldseg_rt segmentation",
                              **_output_identity(sources, algorithm))
    return _save(path, seg, warnings)


def _unit_interval(array, name: str, shape: str) -> np.ndarray:
    """`array` as numpy, checked to be floating point of the given rank, finite and in [0, 1]."""
    array = np.asarray(array)
    if array.ndim != int(shape[0]):
        raise InvalidArgumentError(f"{name} must be a {shape} array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidArgumentError(f"{name} must be floating point, got dtype {array.dtype}")
    # Means of float32 probabilities may pass 1 by rounding (1.0000001): that much is clipped, no more.
    if not np.isfinite(array).all() or array.min() < -ROUNDING or array.max() > 1 + ROUNDING:
        raise InvalidArgumentError(f"{name} must be finite and within [0, 1]")
    return np.clip(array, 0, 1)


def write_probability_segmentation(path, probabilities: np.ndarray, sources: Sequence[Dataset],
                                   class_names: Sequence[str], algorithm: tuple[str, str] | None = None,
                                   warnings: Sequence[str] = ()) -> Path:
    """Write the foreground classes' probabilities (C, I, J, K) in [0, 1] (class 0, the
    background, is left out) as a FRACTIONAL DICOM Segmentation of type PROBABILITY, stored in
    steps of 1/255. Segment numbers and labels as in `write_segmentation`. Returns `path`."""
    probabilities = _unit_interval(probabilities, "probabilities", "4-D (C, I, J, K)")
    sources = _check_sources(sources, probabilities.shape[1:], "probabilities")
    class_names = _check_class_names(class_names, probabilities.shape[0])
    # stacked-segments style: (K, rows J, columns I, segment), segment s + 1 = class s + 1
    frames = np.ascontiguousarray(probabilities[1:].transpose(3, 2, 1, 0))
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=frames,
                              segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
                              fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
                              max_fractional_value=MAX_FRACTIONAL_VALUE,
                              segment_descriptions=_segment_descriptions(class_names, algorithm),
                              omit_empty_frames=False,
                              content_label="PROBABILITIES", content_description="ldseg_rt class probabilities",
                              **_output_identity(sources, algorithm))
    return _save(path, seg, warnings)


def write_parametric_map(path, values: np.ndarray, sources: Sequence[Dataset], label: str = "uncertainty",
                         unit=codes.UCUM.NoUnits, explanation: str = "normalised predictive entropy",
                         algorithm: tuple[str, str] | None = None, warnings: Sequence[str] = ()) -> Path:
    """Write `values` (I, J, K) in [0, 1] (e.g. the normalised predictive entropy) as a DICOM
    Parametric Map of float pixels, its Real World Value Mapping named `label` (at most 16
    characters) in `unit` (a pydicom Code or highdicom CodedConcept; UCUM "1", no units, by
    default) over [0, 1]. Returns `path`."""
    values = _unit_interval(values, "values", "3-D (I, J, K)")
    if not 0 < len(label) <= 16:
        raise InvalidArgumentError(f"label {label!r} must be 1 to 16 characters (DICOM LUT Label)")
    sources = _check_sources(sources, values.shape, "values")
    mapping = hd.pm.RealWorldValueMapping(lut_label=label, lut_explanation=explanation, unit=unit,
                                          value_range=(0.0, 1.0))  # floats: the values are stored as floats
    frames = np.ascontiguousarray(values.transpose(2, 1, 0), dtype=np.float32)
    pm = hd.pm.ParametricMap(source_images=sources, pixel_array=frames,
                             contains_recognizable_visual_features=False,
                             real_world_value_mappings=[mapping],
                             voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
                             # Content Label is a code string: upper case, digits, space, underscore
                             content_label=re.sub(r"[^A-Z0-9_ ]", "_", label.upper()),
                             content_description=f"ldseg_rt {label}",
                             **_output_identity(sources, algorithm))
    return _save(path, pm, warnings)
