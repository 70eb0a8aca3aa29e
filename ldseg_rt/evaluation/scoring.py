"""Scoring a Segmenter on labelled images: Dice of the n-sample consensus per class, and
how the uncertainty map relates to the consensus' errors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .metrics import dice_per_class


@dataclass
class Evaluation:
    dice_per_image: np.ndarray  # (images, classes - 1), empty-vs-empty counts as 1
    dice_pooled: np.ndarray  # (classes - 1,) over all pixels of all images (a volume's Dice)
    uncertainty_wrong: float  # mean uncertainty on pixels the consensus gets wrong
    uncertainty_right: float  # ... and on pixels it gets right
    error_rate_most_uncertain: float  # error rate among the 10% most uncertain pixels
    error_rate_rest: float  # error rate among the other 90%

    def summary(self) -> str:
        classes = range(1, len(self.dice_pooled) + 1)
        per_image = ", ".join(f"class {c}: mean {m:.3f}, median {md:.3f}, min {mn:.3f}" for c, m, md, mn in zip(
            classes, self.dice_per_image.mean(0), np.median(self.dice_per_image, 0), self.dice_per_image.min(0)))
        pooled = ", ".join(f"class {c}: {d:.3f}" for c, d in zip(classes, self.dice_pooled))
        return (f"Dice per image ({len(self.dice_per_image)} images): {per_image}\n"
                f"Dice pooled over all pixels: {pooled}\n"
                f"mean uncertainty on wrong pixels {self.uncertainty_wrong:.3f} vs right {self.uncertainty_right:.3f}; "
                f"error rate in the 10% most uncertain pixels {self.error_rate_most_uncertain:.3f} "
                f"vs {self.error_rate_rest:.4f} in the rest")


def evaluate(seg, examples, *, n: int, seed: int = 0, progress: bool = True) -> Evaluation:
    """examples: iterable of (image, label) in the Segmenter's input form (numpy)."""
    classes = seg.config.num_classes
    scores, inter, sizes, uncertainty, wrong = [], np.zeros(classes - 1), np.zeros(classes - 1), [], []
    for i, (image, label) in enumerate(tqdm(examples, desc="evaluating", disable=not progress)):
        res = seg.sample(image, n=n, seed=seed + i)
        scores.append(dice_per_class(res.mask, label, classes))
        for c in range(1, classes):
            inter[c - 1] += np.sum((res.mask == c) & (label == c))
            sizes[c - 1] += np.sum(res.mask == c) + np.sum(label == c)
        uncertainty.append(res.uncertainty.ravel())
        wrong.append((res.mask != label).ravel())
    uncertainty, wrong = np.concatenate(uncertainty), np.concatenate(wrong)
    top = uncertainty >= np.quantile(uncertainty, 0.9)
    return Evaluation(
        dice_per_image=np.array(scores),
        dice_pooled=np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0),
        uncertainty_wrong=float(uncertainty[wrong].mean()) if wrong.any() else float("nan"),
        uncertainty_right=float(uncertainty[~wrong].mean()),
        error_rate_most_uncertain=float(wrong[top].mean()),
        error_rate_rest=float(wrong[~top].mean()) if (~top).any() else float("nan"),
    )
