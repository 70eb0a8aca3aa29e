"""Training examples at the model's input size: (image (C, S, S) float32 in [0, 1],
label (S, S) uint8), for a 3-D model (volume (C, D, H, W), label (D, H, W)), or for the
pixel-space family (image, annotations (M, S, S) uint8).
Images go through the same `prepare` as at inference, so a model sees in training exactly
what the Segmenter will hand it."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..configs import OFFICIAL, ROBUST, LDSegConfig
from ..data.ambiguous_lesions import TRAIN_SEEDS, AmbiguousDataset
from ..data.phantom_volumes import make_phantom_volume
from ..data.phantoms import NUM_CLASSES, make_phantom
from ..errors import DatasetError
from ..io.images import read_image, read_label
from ..io.pairs import find_pairs
from ..io.nifti import NIFTI_SUFFIXES, read_volume, volume_slices
from ..pipeline.preprocess import prepare, resize_nearest

log = logging.getLogger(__name__)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a class map."""
    if label.shape == (size, size):
        return label.astype(np.uint8)
    resized = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=(size, size),
                            mode="nearest-exact")
    return resized[0, 0].numpy().astype(np.uint8)


def zoom_label(label: np.ndarray, cfg: LDSegConfig) -> np.ndarray:
    """A label volume (X, Y, Z) -> the networks' (D, H, W) = (Z, Y, X), as the official 3-D loader
    resamples labels: each class's mask zoomed linearly and rounded, higher classes over lower ones."""
    classes = np.transpose(label.astype(np.int64))
    factors = np.divide(cfg.image_shape, classes.shape)
    out = np.zeros(cfg.image_shape, np.uint8)
    for c in range(1, cfg.num_classes):
        out[ndimage.zoom((classes == c).astype(np.int64), factors, order=1, mode="nearest") > 0] = c
    return out


def example(image: np.ndarray, label: np.ndarray, cfg: LDSegConfig, mode: str = ROBUST) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at the model's size, from an image (or a 3-D model's volume) and its class map,
    the image prepared in preprocessing `mode` (OFFICIAL: the official loader's, labels resized as it does)."""
    if label.max(initial=0) >= cfg.num_classes:
        raise DatasetError(f"label has class {int(label.max())}, model {cfg.name!r} has {cfg.num_classes} classes")
    if cfg.spatial_dims == 3:
        return prepare(image, cfg, mode=mode).pixels, zoom_label(label, cfg)
    if mode == OFFICIAL:
        resized = resize_nearest(torch.from_numpy(label.astype(np.uint8))[None], cfg.image_size)[0].numpy()
        return prepare(image, cfg, mode=mode).pixels, resized
    return prepare(image, cfg).pixels, resize_label(label, cfg.image_size)


class SyntheticData:
    """Phantoms generated on the fly from seeds [0, count); evaluation uses other seeds."""

    def __init__(self, cfg: LDSegConfig, count: int = 100_000, mode: str = ROBUST):
        if cfg.num_classes != NUM_CLASSES:
            raise DatasetError(f"synthetic phantoms have {NUM_CLASSES} classes, model {cfg.name!r} has {cfg.num_classes}")
        self.cfg, self.count, self.mode = cfg, count, mode

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        if self.cfg.spatial_dims == 3:  # phantoms at the networks' size, in (X, Y, Z) order
            image, label = make_phantom_volume(self.cfg.image_shape[::-1], i)
        else:
            image, label = make_phantom(self.cfg.image_size, i, self.cfg.in_channels)
        return example(image, label, self.cfg, self.mode)


def folder_data(cfg: LDSegConfig, pairs, mode: str = ROBUST) -> list:
    """Image/label file pairs, read once and held in memory."""
    return [example(read_image(i), read_label(l), cfg, mode) for i, l in pairs]


class VolumeSlices(list):
    """Training examples cut from volumes, and the axis they were cut along (which the trained
    model records, so that volumes are segmented along the same axis)."""

    def __init__(self, examples, slice_axis: int):
        super().__init__(examples)
        self.slice_axis = slice_axis


def volume_data(cfg: LDSegConfig, pairs, axis: int, mode: str = ROBUST) -> VolumeSlices:
    """Every 2-D slice along `axis` of each (volume, label volume) file pair, but slices
    without contrast (the empty slices at a volume's edges), which segmenting a volume does
    not ask the model about either: it takes them for background."""
    data, blank = [], 0
    for image_path, label_path in pairs:
        volume, label = read_volume(image_path)[0], read_volume(label_path)[0]
        if volume.shape != label.shape:
            raise DatasetError(f"{image_path.name} {volume.shape} and {label_path.name} {label.shape} differ in shape")
        for image, lab in zip(volume_slices(volume, axis), volume_slices(label, axis)):
            if np.ptp(image) == 0:
                blank += 1
                continue
            data.append(example(np.asarray(image, np.float32), np.rint(lab).astype(np.int64), cfg, mode))
    if blank:
        log.info("left out %d slices without contrast along axis %d", blank, axis)
    return VolumeSlices(data, axis % 3)


def whole_volume_data(cfg: LDSegConfig, pairs, mode: str = ROBUST) -> list:
    """(volume, label volume) file pairs for a 3-D model, each read, prepared and held in memory."""
    data = []
    for image_path, label_path in pairs:
        volume, label = read_volume(image_path)[0], read_volume(label_path)[0]
        if volume.shape != label.shape:
            raise DatasetError(f"{image_path.name} {volume.shape} and {label_path.name} {label.shape} differ in shape")
        data.append(example(volume, np.rint(label).astype(np.int64), cfg, mode))
        log.info("%s: prepared as %s", image_path.name, "x".join(map(str, cfg.image_shape)))
    return data


class AmbiguousSyntheticData:
    """Synthetic ambiguous lesions (ldseg_rt.data.ambiguous_lesions) from its training seeds, each
    image with its fixed annotations; the trainer picks one per step."""

    def __init__(self, cfg, count: int = 100_000, annotators: int = 4):
        self.cfg = cfg
        self.cases = AmbiguousDataset(cfg.image_size, TRAIN_SEEDS[:count], annotators)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int):
        image, annotations = self.cases[i]
        return prepare(image, self.cfg).pixels, annotations


def build_dataset(cfg, data: str, label_dir=None, axis: int = 2, mode: str = ROBUST):
    """'synthetic', or a folder of images or NIfTI volumes paired by name with `label_dir`, the images
    prepared in preprocessing `mode` (the model's: OFFICIAL for the official networks)."""
    if cfg.family == "ambiguous":
        if data != "synthetic":
            raise DatasetError(f"the pixel-space family trains on --data synthetic (annotation sets); got {data!r}")
        return AmbiguousSyntheticData(cfg)
    if data == "synthetic":
        return SyntheticData(cfg, mode=mode)
    if label_dir is None:
        raise DatasetError("a folder of images needs --labels, the folder of matching label maps")
    pairs = find_pairs(data, label_dir)
    volumes = any(image.name.endswith(NIFTI_SUFFIXES) for image, _ in pairs)
    if cfg.spatial_dims == 3:
        if not volumes:
            raise DatasetError(f"model {cfg.name!r} is 3-D: it trains on NIfTI volumes, and {data} holds none")
        return whole_volume_data(cfg, pairs, mode)
    return volume_data(cfg, pairs, axis, mode) if volumes else folder_data(cfg, pairs, mode)
