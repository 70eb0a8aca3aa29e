"""Pairing a folder of images (or volumes) with a folder of label maps by file name."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DatasetError
from .files import DATA_SUFFIXES, file_suffix

LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_segmentation")


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


def _stem(path: Path) -> str:
    return path.name[:len(path.name) - len(file_suffix(path))]


def _natural_key(path: Path) -> tuple[list, str]:
    """Case2 before Case10: runs of digits compare as numbers (re.split puts them at odd
    indices); the name itself breaks ties."""
    parts = re.split(r"(\d+)", path.name.casefold())
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], path.name


def _data_files(directory: str | os.PathLike, what: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    # Hidden files are skipped: macOS leaves '._Case1.png' companions that are not images.
    files = [p for p in directory.iterdir()
             if p.is_file() and not p.name.startswith(".") and file_suffix(p) in DATA_SUFFIXES]
    if not files:
        raise DatasetError(f"no {what} files ({', '.join(DATA_SUFFIXES)}) in {directory}")
    return files
