"""Philox4x32-10 noise in numpy, an independent twin of csrc/philox.h (the
oracle's noise, written apart from the C++ on purpose so that each checks the other).

The noise of element e of a latent is a pure function of (seed, sample, step,
stream, e): key = (seed & 0xffffffff, seed >> 32), counter = (e // 4, step,
sample, stream), lane e % 4 of the Box-Muller transform of the Philox output.
"""
import numpy as np

from ..errors import InvalidArgumentError

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(m, x):
    product = x.astype(np.uint64) * m  # exact: both factors are < 2^32
    return (product >> np.uint64(32)).astype(np.uint32), product.astype(np.uint32)


def philox4x32(counters, key):
    """Philox4x32-10 of counters (uint32, shape (N, 4)) under key (k0, k1); uint32 (N, 4)."""
    c = np.asarray(counters, dtype=np.uint32)
    if c.ndim != 2 or c.shape[1] != 4:
        raise InvalidArgumentError(f"counters must have shape (N, 4), got {c.shape}")
    c0, c1, c2, c3 = (c[:, j] for j in range(4))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
    return np.stack([c0, c1, c2, c3], axis=1)


def normal(seed, sample, step, stream, numel):
    """Standard normals (float64, shape (numel,)) of the draw (seed, sample, step, stream)."""
    seed, numel = int(seed), int(numel)
    if not 0 <= seed < 2**64:
        raise InvalidArgumentError(f"seed must be in [0, 2^64), got {seed}")
    for name, word in (("sample", sample), ("step", step), ("stream", stream)):
        if not 0 <= int(word) < 2**32:
            raise InvalidArgumentError(f"{name} must be in [0, 2^32), got {word}")
    if not 0 <= numel <= 2**34:
        raise InvalidArgumentError(f"numel must be in [0, 2^34], got {numel}")
    blocks = -(-numel // 4)
    counters = np.empty((blocks, 4), dtype=np.uint32)
    counters[:, 0] = np.arange(blocks, dtype=np.uint32)
    counters[:, 1:] = (int(step), int(sample), int(stream))
    r = philox4x32(counters, (seed & _MASK32, seed >> 32)).astype(np.float64)
    u = (r + 0.5) * 2.0**-32
    # Lanes (0, 1) come from the words (r0, r1), lanes (2, 3) from (r2, r3).
    radius = np.sqrt(-2.0 * np.log(u[:, 0::2]))
    theta = 2.0 * np.pi * u[:, 1::2]
    out = np.empty((blocks, 4))
    out[:, 0::2] = radius * np.cos(theta)
    out[:, 1::2] = radius * np.sin(theta)
    return out.reshape(-1)[:numel]
