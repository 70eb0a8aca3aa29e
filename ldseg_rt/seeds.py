"""The seed rule. A seed is an integer in [0, 2**64). Without one, a fresh one is drawn once and
recorded with the result (result.seed, result.json), so that every result can be reproduced.
Seeds derived from a seed or a name (a volume's slice k, a DICOM series by its UID) are pure
functions of what they derive from, never of the batch, worker or order they ran in.
"""
from __future__ import annotations

import hashlib
import numbers
import secrets

import numpy as np

from .errors import InvalidArgumentError

SEED_LIMIT = 2 ** 64


def check_seed(seed) -> int | None:
    """The seed as an int (None stays None), or InvalidArgumentError naming what is wrong."""
    if seed is None:
        return None
    if isinstance(seed, np.ndarray) and seed.ndim == 0:
        seed = seed.item()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def fresh_seed() -> int:
    """A new seed for a run given none (63 bits, so it also fits a signed 64-bit field)."""
    return secrets.randbits(63)


def resolve_seed(seed) -> int:
    """The given seed, checked, or a fresh one."""
    checked = check_seed(seed)
    return fresh_seed() if checked is None else checked


def slice_seed(seed: int, k: int) -> int:
    """Slice k's seed: a pure function of (seed, k), never of the batch it ran in."""
    return int(np.random.SeedSequence([seed, k]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def name_seed(name: str) -> int:
    """The seed of something known by a name (a DICOM series by its SeriesInstanceUID): 63 bits
    of the name's sha256, the same on every machine and every run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
