"""The memory rule: a request whose results would not fit the Segmenter's memory_limit is refused
before any work, with a message naming what it would need and how to need less. Results are
what grows with the input: per pixel or voxel at the input's resolution, so the estimate is a
count of bytes per voxel times the voxels.
"""
from __future__ import annotations

import math

from .errors import InvalidArgumentError

DEFAULT_MEMORY_LIMIT = 8 * 2 ** 30  # bytes of results one call may build


def sample_bytes_per_pixel(classes: int, n: int, decode_chunk: int, return_samples: bool) -> int:
    """One sample() call on one image: n uint8 maps (if kept), the decoder chunk's float32
    probabilities, their sum and mean, the chunk's argmax maps, the consensus and the float64
    uncertainty."""
    return (n if return_samples else 0) + 4 * classes * (decode_chunk + 2) + decode_chunk + 1 + 8


def volume_bytes_per_voxel(classes: int, n: int, return_samples: bool) -> int:
    """A volume's stored results: float32 probabilities and uncertainty, the uint8 consensus and
    the n uint8 sample volumes (if kept)."""
    return 4 * classes + 4 + 1 + (n if return_samples else 0)


def check_memory(shape, bytes_per_voxel: int, limit: int, what: str, advice: str) -> None:
    """Refuse results of `bytes_per_voxel` over `shape` voxels above `limit` bytes. what: the
    request in words ('a 512x512 image with n=16'); advice: how to need less."""
    need = bytes_per_voxel * math.prod(int(s) for s in shape)
    if need > limit:
        raise InvalidArgumentError(f"{what} needs about {_in_words(need)} for its results, more than "
                                   f"memory_limit ({_in_words(limit)}): {advice}")


def _in_words(size: int) -> str:
    return f"{size / 2 ** 30:.1f} GiB" if size >= 2 ** 30 else f"{size / 2 ** 20:.1f} MiB"
