"""Segmentation metrics. Masks are numpy arrays of the same shape; two empty masks agree
perfectly (Dice 1), one empty against one not disagrees (Dice 0)."""
from __future__ import annotations

import numpy as np


def dice(pred, target) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of two binary masks."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {target.shape}")
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, target).sum() / total)


def dice_per_class(pred, target, num_classes: int) -> np.ndarray:
    """Dice of each foreground class 1..num_classes-1 between two class maps."""
    pred, target = np.asarray(pred), np.asarray(target)
    return np.array([dice(pred == c, target == c) for c in range(1, num_classes)])
