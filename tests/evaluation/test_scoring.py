"""evaluate() on a segmenter double whose outputs are known, against hand-computed scores."""
from types import SimpleNamespace

import numpy as np
import pytest

from ldseg_rt.evaluation.scoring import evaluate


class KnownSegmenter:
    """Returns preset consensus masks and uncertainty maps, one per call."""

    def __init__(self, masks, uncertainties):
        self.config = SimpleNamespace(num_classes=3)
        self.outputs = iter(zip(masks, uncertainties))
        self.seeds = []

    def sample(self, image, n, seed):
        self.seeds.append(seed)
        mask, unc = next(self.outputs)
        return SimpleNamespace(mask=mask, uncertainty=unc)


def test_scores_and_uncertainty_split(rng):
    labels = [rng.integers(0, 3, size=(20, 10)) for _ in range(3)]
    masks = [np.where(rng.uniform(size=l.shape) < 0.2, rng.integers(0, 3, size=l.shape), l) for l in labels]
    uncs = [np.where(m != l, 0.8, 0.1) + rng.uniform(0, 0.05, size=l.shape) for m, l in zip(masks, labels)]
    seg = KnownSegmenter(masks, uncs)
    result = evaluate(seg, [(None, l) for l in labels], n=4, seed=7, progress=False)
    assert seg.seeds == [7, 8, 9]
    for i, (m, l) in enumerate(zip(masks, labels)):
        for c in (1, 2):
            want = 2 * np.sum((m == c) & (l == c)) / (np.sum(m == c) + np.sum(l == c))
            assert result.dice_per_image[i, c - 1] == pytest.approx(want)
    m, l, u = np.concatenate(masks), np.concatenate(labels), np.concatenate(uncs)
    for c in (1, 2):
        assert result.dice_pooled[c - 1] == pytest.approx(2 * np.sum((m == c) & (l == c)) / (np.sum(m == c) + np.sum(l == c)))
    assert result.uncertainty_wrong == pytest.approx(u[m != l].mean())
    assert result.uncertainty_right == pytest.approx(u[m == l].mean())
    top = u >= np.quantile(u, 0.9)
    assert result.error_rate_most_uncertain == pytest.approx(np.mean((m != l)[top]))
    assert "Dice pooled" in result.summary()
