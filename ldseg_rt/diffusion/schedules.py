"""LDSeg's noise schedule: the discrete-time cosine schedule and its float time grid."""
from __future__ import annotations

import numpy as np


def cosine_alpha_bar(t, timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """Discrete-time cosine schedule (Nichol & Dhariwal) at float times t in [0, T)."""
    def f(u):
        return np.cos((np.asarray(u, np.float64) / timesteps + s) / (1 + s) * np.pi / 2) ** 2
    return f(t) / f(0.0)


def ldseg_timesteps(steps: int, timesteps: int = 1000) -> np.ndarray:
    """LDSeg's float grid t = linspace(0, T - 1, S), returned in run order (T - 1 first).
    As in the original, S = 1 is the grid [0]: a single step at t = 0 leaves z unchanged."""
    return np.linspace(0.0, timesteps - 1, steps)[::-1].copy()
