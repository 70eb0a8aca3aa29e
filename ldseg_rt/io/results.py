"""A case's results on disk: one folder per case, written whole and atomically (a temporary
folder renamed into place), so a folder that exists is complete, and `result.json` in it says
how to reproduce it.

Volumes: `mask.nii.gz` (class ids), `probs.nii.gz` (classes on the 4th axis),
`uncertainty.nii.gz`, `samples.nii.gz` (on request), all on the input's grid with its affine;
from a DICOM series also `segmentation.dcm` (DICOM Segmentation of the consensus, one segment
per foreground class), `probabilities.dcm` (fractional Segmentation of the class
probabilities) and `uncertainty.dcm` (Parametric Map). 2-D images: `mask.png` (class colours),
`uncertainty.png` (grey, 0 black to 1 white). NPY of every array with `npy`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from .atomic import replacing
from .volume import Volume

FORMATS = ("nifti", "dicom-seg", "png", "npy")
SIDECAR = "result.json"


def default_formats(volume: bool, dicom: bool) -> tuple[str, ...]:
    if not volume:
        return ("png", "npy")
    return ("nifti", "dicom-seg") if dicom else ("nifti",)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InvalidArgumentError(f"unknown output format(s) {unknown or text!r}; choose from {', '.join(FORMATS)}")
    return formats


def is_complete(folder: Path) -> bool:
    """Whether a case's results are all there (the folder is only ever renamed in whole)."""
    return (folder / SIDECAR).is_file()


def _arrays(result) -> dict[str, np.ndarray]:
    arrays = {"mask": result.mask, "probs": result.probs, "uncertainty": result.uncertainty}
    if result.samples is not None:
        arrays["samples"] = result.samples
    return arrays


def _write_volume(folder: Path, result, formats, class_names, algorithm, skipped: list) -> None:
    from .nifti import write_nifti
    volume: Volume = result.volume
    if "nifti" in formats:
        for name, array in _arrays(result).items():
            write_nifti(folder / f"{name}.nii.gz", array, volume)
    if "dicom-seg" in formats:
        if not isinstance(volume.source, list):
            skipped.append("dicom-seg: the input is not a DICOM series, so there is nothing to reference")
        else:
            from .dicom_outputs import write_parametric_map, write_probability_segmentation, write_segmentation
            marks = dict(algorithm=algorithm, warnings=[str(w) for w in result.warnings])
            write_segmentation(folder / "segmentation.dcm", result.mask, volume.source, class_names, **marks)
            write_probability_segmentation(folder / "probabilities.dcm", result.probs, volume.source, class_names,
                                           **marks)
            write_parametric_map(folder / "uncertainty.dcm", result.uncertainty, volume.source, **marks)
    if "png" in formats:
        skipped.append("png: a volume is written as NIfTI, DICOM or NPY")


def _write_image(folder: Path, result, formats, skipped: list) -> None:
    from .images import write_label_colours_png, write_png
    if "png" in formats:
        write_label_colours_png(folder / "mask.png", result.mask)
        write_png(folder / "uncertainty.png", np.round(np.clip(result.uncertainty, 0, 1) * 255).astype(np.uint8))
    skipped += [f"{f}: a 2-D image is written as PNG or NPY" for f in ("nifti", "dicom-seg") if f in formats]


def write_case(folder, result, formats, class_names, sidecar: dict, algorithm: tuple[str, str]) -> Path:
    """Write a SampleResult (2-D) or a VolumeResult into `folder`, replacing whatever was
    there only once everything is written, with `sidecar` (plus the outputs' sha256) as
    result.json."""
    folder = Path(folder)
    skipped: list[str] = []
    with replacing(folder) as tmp:
        tmp.mkdir()
        if hasattr(result, "volume"):
            _write_volume(tmp, result, formats, class_names, algorithm, skipped)
        else:
            _write_image(tmp, result, formats, skipped)
        if "npy" in formats:
            for name, array in _arrays(result).items():
                np.save(tmp / f"{name}.npy", np.asarray(array), allow_pickle=False)
        outputs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
        record = {**sidecar, "formats": list(formats), "skipped_formats": skipped, "outputs": outputs}
        (tmp / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
    return folder
