"""n samples' class probabilities -> per-sample class maps, mean probabilities, consensus
and normalised predictive entropy; in one call, or streamed as the decoder produces chunks
of samples (so the n samples' probabilities never have to be held at once)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_probs(probs: torch.Tensor, size: tuple[int, ...] | None) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (n, C, h, w) probabilities, trilinear of
    (n, C, d, h, w) ones (torch has no antialiasing in 3-D); weights are convex, so each pixel
    still sums to 1. size None: as they are."""
    if size is None or tuple(probs.shape[2:]) == tuple(size):
        return probs
    if len(size) == 3:
        return F.interpolate(probs, size=size, mode="trilinear", align_corners=False)
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False, antialias=True)


def class_argmax(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.argmax(probs, dim) as uint8 (the first of equal maxima), in one pass per class:
    torch's argmax over the class axis of NCHW is strided and far slower on the CPU
    (benchmarks/RESULTS.md, "CPU speed")."""
    best = probs.select(dim, 0)
    index = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[dim]):
        candidate = probs.select(dim, c)
        better = candidate > best
        index.masked_fill_(better, c)
        best = torch.where(better, candidate, best)
    return index


class Aggregator:
    """Add chunks of (b, C, h, w) probabilities, then `result()`: samples (n, H, W) uint8,
    mean probabilities (C, H, W) float32, consensus (H, W) uint8 and uncertainty (H, W) in
    [0, 1] (entropy / log C); volumes alike, with (D, H, W) for (H, W). Chunks are resized
    to `size` first (None: kept as they are).
    keep_samples=False keeps no per-sample maps (samples is then None): memory independent of n.
    fused: aggregate in the Triton kernel (ldseg_rt.kernels.aggregate); None: for CUDA chunks,
    which then stay on their device, results included (True also runs it on CPU chunks under
    TRITON_INTERPRET=1, which is how the tests check it)."""

    def __init__(self, size: tuple[int, ...] | None = None, keep_samples: bool = True, fused: bool | None = None):
        self.size = size
        self.keep_samples = keep_samples
        self.fused = fused
        self._samples: list[torch.Tensor] = []
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._whole = None  # the fused outputs of the only chunk so far

    def add(self, probs: torch.Tensor) -> None:
        probs = resize_probs(probs.float(), self.size)
        if self.fused is None:
            self.fused = probs.is_cuda
        if self.fused:
            samples, mean, mask, uncertainty = _fused(probs)
            total = mean * probs.shape[0]
            self._whole = (mean, mask, uncertainty) if not self._count else None
        else:
            samples = class_argmax(probs, 1) if self.keep_samples else None
            total = probs.sum(dim=0)
        if self.keep_samples:
            self._samples.append(samples)
        self._sum = total if self._sum is None else self._sum.add_(total)
        self._count += probs.shape[0]

    def result(self):
        if not self._count:
            raise ValueError("no samples were added")
        samples = torch.cat(self._samples) if self.keep_samples else None
        if self.fused:  # one chunk (all n at once on a GPU): its own outputs; else the kernel on the mean
            return samples, *(self._whole or _fused((self._sum / self._count)[None])[1:])
        mean = self._sum / self._count
        entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)
        uncertainty = (entropy / math.log(mean.shape[0])).clamp(0.0, 1.0)
        return samples, mean, class_argmax(mean, 0), uncertainty


def _fused(probs: torch.Tensor):
    """The Triton aggregation of (n, C, *spatial) probabilities, any spatial rank (the kernel
    takes (n, C, H, W); imported only here: the CPU path needs no triton)."""
    from ..kernels.aggregate import aggregate as fused
    n, classes, *spatial = probs.shape
    samples, mean, mask, uncertainty = fused(probs.reshape(n, classes, -1, 1))
    return (samples.reshape(n, *spatial), mean.reshape(classes, *spatial), mask.reshape(spatial),
            uncertainty.reshape(spatial))


def aggregate(probs: torch.Tensor):
    """All n samples' (n, C, H, W) probabilities at once; on a GPU in one Triton pass."""
    aggregator = Aggregator()
    aggregator.add(probs)
    return aggregator.result()
