"""Parameterisations: the (x0, eps) a model output implies at a noisy state, for each
prediction type, and the v target."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .constants import PREDICTIONS


def to_x0_eps(out, z, a, s, prediction: str):
    """(x0, eps) implied by a model output `out` at noisy z = a x0 + s eps."""
    if prediction == "eps":
        return (z - s * out) / a, out
    if prediction == "x":
        return out, eps_from_x0(z, out, a, s)
    if prediction == "v":
        return a * z - s * out, s * z + a * out
    raise InvalidArgumentError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def eps_from_x0(z, x0, a, s):
    """The eps implied by x0 at z = a x0 + s eps (0 where s = 0, where z is x0 itself)."""
    return (z - a * x0) / s if s > 0 else np.zeros_like(z)


def v_from_x0_eps(x0, eps, a, s):
    """The v target (Salimans & Ho): v = a eps - s x0."""
    return a * eps - s * x0
