"""Volumes through 2-D models: the slices along one axis go through `sample_batch` in batches
of bounded size, and the per-slice results are stacked back onto the volume's grid. A 3-D
model sees the whole volume in one `sample` call instead.

With a seed, slice k gets its own seed derived from (seed, k), so its result does not depend
on which slices shared its batch, nor on the batch size. A slice without contrast (all voxels
equal, as in the empty slices at a volume's edges) is not a question for the model: it is
background with no uncertainty, and the result says how many there were.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..io.volume import Volume
from ..memory import check_memory, volume_bytes_per_voxel
from ..seeds import resolve_seed, slice_seed


@dataclass
class VolumeResult:
    """What `segment_volume` returns, every array on the input volume's voxel grid."""
    mask: np.ndarray  # (I, J, K) uint8 consensus
    probs: np.ndarray  # (C, I, J, K) float32 mean class probabilities
    uncertainty: np.ndarray  # (I, J, K) float32 normalised predictive entropy in [0, 1]
    samples: np.ndarray | None  # (n, I, J, K) uint8 sample volumes, on request
    volume: Volume  # the input, whose geometry (affine, DICOM sources) the results share
    axis: int | None  # the voxel axis the slices were taken along; None: a 3-D model saw the whole volume
    seed: int  # the seed that reproduces this result
    timings: dict = field(default_factory=dict)  # ms per stage, summed over the batches
    warnings: list = field(default_factory=list)  # per-slice warnings, 'slice k: ...'


def _as_volume(volume) -> Volume:
    if isinstance(volume, Volume):
        return volume
    array = np.asarray(volume)
    return Volume(array, np.eye(4), description=f"array {array.shape}")


def segment_volume(segmenter, volume, options) -> VolumeResult:
    """Segment a Volume (or a 3-D array, identity geometry) with VolumeOptions: a 2-D model
    slice by slice along options.axis, by default the one the model's training slices were cut
    along where it records one, else the through-plane axis (the one with the largest spacing).
    A 3-D model segments the volume whole (axis and max_batch do not apply)."""
    volume = _as_volume(volume)
    if segmenter.config.spatial_dims == 3:
        if options.axis is not None:
            raise InvalidArgumentError(f"model {segmenter.config.name!r} is 3-D: it segments the whole volume, "
                                       f"not slices along axis {options.axis}")
        _check_memory(segmenter, volume.array.shape, options)
        res = segmenter.sample(volume.array, options=options)
        return VolumeResult(mask=res.mask, probs=res.probs, uncertainty=res.uncertainty, samples=res.samples,
                            volume=volume, axis=None, seed=res.seed, timings=res.timings, warnings=res.warnings)
    if options.n == "auto":
        raise InvalidArgumentError("n='auto' decides n per image; a volume through a 2-D model needs one n for "
                                   "every slice")
    axis = options.axis
    if axis is None:
        axis = segmenter.slice_axis if segmenter.slice_axis is not None else volume.through_plane_axis()
    seed, n = resolve_seed(options.seed), options.n
    slices = np.moveaxis(volume.array, axis, 0)
    depth, (h, w) = slices.shape[0], slices.shape[1:]
    classes = segmenter.config.num_classes
    _check_memory(segmenter, volume.array.shape, options)

    probs = np.zeros((classes, depth, h, w), np.float32)
    probs[0] = 1.0  # what a slice without contrast keeps: background, certain
    mask = np.zeros((depth, h, w), np.uint8)
    uncertainty = np.zeros((depth, h, w), np.float32)
    samples = np.zeros((n, depth, h, w), np.uint8) if options.return_samples else None
    timings, warnings = {}, []
    readable = [k for k in range(depth) if np.ptp(slices[k]) > 0]
    if len(readable) < depth:
        warnings.append(f"{depth - len(readable)} of {depth} slices have no contrast: segmented as background")
    batches = [readable[i:i + options.max_batch] for i in range(0, len(readable), options.max_batch)]
    for batch in tqdm(batches, desc="slices", unit="batch", disable=not options.progress or len(batches) < 2):
        results = segmenter.sample_batch([slices[k] for k in batch], options=options,
                                         seed=[slice_seed(seed, k) for k in batch])
        for k, res in zip(batch, results):
            probs[:, k], mask[k], uncertainty[k] = res.probs, res.mask, res.uncertainty
            if samples is not None:
                samples[:, k] = res.samples
            warnings += [f"slice {k}: {text}" for text in res.warnings]
        for stage, ms in results[0].timings.items():
            timings[stage] = timings.get(stage, 0.0) + ms

    def back(array: np.ndarray, lead: int) -> np.ndarray:  # the slice axis back where it was taken from
        return np.ascontiguousarray(np.moveaxis(array, lead, lead + axis))

    return VolumeResult(mask=back(mask, 0), probs=back(probs, 1), uncertainty=back(uncertainty, 0),
                        samples=None if samples is None else back(samples, 1), volume=volume, axis=axis, seed=seed,
                        timings=timings, warnings=warnings)


def _check_memory(segmenter, shape, options) -> None:
    """Refuse, before any work, volumes whose results would not fit the Segmenter's limit."""
    n = options.draws
    check_memory(shape, volume_bytes_per_voxel(segmenter.config.num_classes, n, options.return_samples),
                 segmenter.memory_limit,
                 f"a volume of {'x'.join(map(str, shape))} voxels (n={n}{', with samples' if options.return_samples else ''})",
                 "leave out the samples or raise Segmenter(memory_limit=...)")
