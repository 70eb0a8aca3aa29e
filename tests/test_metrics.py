"""Metrics on hand-computed cases."""
import numpy as np
import pytest

from ldseg_rt.metrics import dice, dice_per_class


def test_dice_hand_cases():
    a = np.array([[1, 1, 0], [0, 0, 0]])
    b = np.array([[1, 0, 0], [1, 0, 0]])
    assert dice(a, b) == pytest.approx(2 * 1 / 4)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(np.zeros((2, 2)), np.eye(2)) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_dice_per_class_against_counts(rng):
    pred, target = rng.integers(0, 3, size=(2, 40, 30))
    got = dice_per_class(pred, target, 3)
    for c in (1, 2):
        inter = np.sum((pred == c) & (target == c))
        assert got[c - 1] == pytest.approx(2 * inter / (np.sum(pred == c) + np.sum(target == c)))
