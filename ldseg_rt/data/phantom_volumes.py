"""Seeded 3-D phantoms with labels, to train and test the 3-D networks without real scans.

A phantom volume (X, Y, Z) holds a body of tissue in darker air, an organ (class 1) and a
smaller structure (class 2) touching it, as random ellipsoids, with partial-volume edges, a
linear bias field and Gaussian noise.

    volume, label = make_phantom_volume((48, 40, 32), seed=0)   # float32, uint8 in {0, 1, 2}

Built from +, -, *, / and comparisons only, so a seed gives the same arrays on any machine.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

MIN_SIDE = 8


def _ellipsoid_depth(grid, centre, radii) -> np.ndarray:
    """1 - r^2 in the ellipsoid's normalised frame: positive inside, 0 on the surface."""
    return 1.0 - sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))


def make_phantom_volume(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: volume float32 (X, Y, Z) roughly in [0, 1], label uint8 in {0, 1, 2}."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIDE:
        raise InvalidArgumentError(f"shape must be three sides of at least {MIN_SIDE} voxels, got {shape}")
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    sides = np.array(shape, np.float32)
    body = _ellipsoid_depth(grid, sides / 2, sides * rng.uniform(0.38, 0.46, 3))
    organ_radii = sides * rng.uniform(0.14, 0.22, 3)
    organ_centre = sides / 2 + sides * rng.uniform(-0.06, 0.06, 3)
    organ = _ellipsoid_depth(grid, organ_centre, organ_radii)
    # The second structure sits against the organ along a random axis, half outside it.
    axis, sign = int(rng.integers(3)), float(rng.choice([-1.0, 1.0]))
    small_radii = organ_radii * rng.uniform(0.45, 0.7, 3)
    small_centre = organ_centre.copy()
    small_centre[axis] += sign * organ_radii[axis]
    small = _ellipsoid_depth(grid, small_centre, small_radii)

    label = np.zeros(shape, np.uint8)
    label[organ > 0] = 1
    label[small > 0] = 2
    grey = rng.uniform(0.1, 0.2), rng.uniform(0.35, 0.5), rng.uniform(0.6, 0.75), rng.uniform(0.85, 0.95)
    volume = np.full(shape, grey[0], np.float32)
    for depth, level in ((body, grey[1]), (organ, grey[2]), (small, grey[3])):
        cover = np.clip(0.5 + 4.0 * depth, 0.0, 1.0)  # a partial-volume ramp at the surface
        volume += cover * (level - volume)
    bias = 1.0 + sum(rng.uniform(-0.1, 0.1) * (g / s - 0.5) for g, s in zip(grid, sides))
    volume = volume * bias + rng.normal(0.0, 0.03, shape).astype(np.float32)
    return volume.astype(np.float32), label
