"""Scoring sets of samples against sets of annotations (the ambiguous-segmentation family):
GED, HM-IoU and NCC of N samples per image against its M annotations, averaged over images,
on the synthetic cases whose annotation distribution is known."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..data.ambiguous_lesions import AmbiguousDataset
from .metrics import ged, hm_iou, ncc


@dataclass
class DistributionScores:
    ged: np.ndarray  # (images,) D^2_GED with d = 1 - IoU
    hm_iou: np.ndarray  # (images,)
    ncc: np.ndarray  # (images,) PHiSeg's S_NCC

    def mean(self) -> dict:
        sem = float(self.ged.std(ddof=1) / np.sqrt(len(self.ged))) if len(self.ged) > 1 else float("nan")
        return {"ged": float(self.ged.mean()), "ged_sem": sem, "hm_iou": float(self.hm_iou.mean()),
                "ncc": float(self.ncc.mean())}

    def summary(self) -> str:
        m = self.mean()
        return (f"{len(self.ged)} images: GED {m['ged']:.3f} +- {m['ged_sem']:.3f}, HM-IoU {m['hm_iou']:.3f}, "
                f"NCC {m['ncc']:.3f}")


def score_samples(draw, cases: AmbiguousDataset, desc: str = "evaluating", progress: bool = True) -> DistributionScores:
    """draw(case, k) -> (N, S, S) binary samples for case k; each scored against the case's
    fixed annotations."""
    rows = []
    for k in tqdm(range(len(cases)), desc=desc, unit="image", disable=not progress):
        case = cases.case(k)
        annotations = case.annotations(cases.annotators, case.seed)
        samples = draw(case, k)
        rows.append((ged(samples, annotations), hm_iou(samples, annotations), ncc(samples, annotations)))
    return DistributionScores(*np.array(rows, dtype=np.float64).T)


def evaluate_segmenter(seg, cases: AmbiguousDataset, *, n: int, progress: bool = True) -> DistributionScores:
    """A Segmenter's n samples per case (seed k for case k)."""
    return score_samples(lambda case, k: seg.sample(case.image, n=n, seed=k).samples, cases, progress=progress)
