"""Segmentation metrics.

Single-mask metrics (`iou`, `dice`, `dice_per_class`) take masks of one shape. The
distribution metrics of ambiguous segmentation (`ged`, `hm_iou`, `ncc`; Christensen et al.,
"Diffusion Based Ambiguous Image Segmentation", SCIA 2025, code JakobLC/AmbDiffSeg) compare a
set of N sampled binary masks of shape (N, H, W) with a set of M annotations of shape (M, H, W).

Input conventions
-----------------
Masks are numpy arrays or torch tensors (any device; other array-likes go through
`np.asarray`) of dtype bool, integer, or float, holding only the values 0 and 1; anything else
is a ValueError (bad values or shapes) or a TypeError (not a numeric array). The sets must have
rank 3, the same H and W, N, M >= 1 and H, W >= 1. `ncc` alone accepts samples with values
anywhere in [0, 1] (per-pixel foreground probabilities; binary masks are the paper's use).

Empty-mask conventions (as in the original code's `binary_iou` / `binary_dice`, which return
1.0 when TP + FP + FN == 0)
--------------------------------------------------------------------------------------------
* IoU(A, B) = |A n B| / |A u B|; two empty masks agree perfectly: IoU = 1. One empty and one
  non-empty mask: IoU = 0.
* Dice(A, B) = 2|A n B| / (|A| + |B|); two empty masks: Dice = 1; one empty, one not: Dice = 0.
* The distance of GED and the cost of HM-IoU is d = 1 - IoU with that convention, so two empty
  masks are at distance 0 and an empty mask is at distance 1 from every non-empty one.

Set metrics
-----------
* GED (D^2_GED) = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], each expectation the plain mean of
  the full pairwise matrix, diagonals included (N x M, N x N, M x M; the original's
  `generalized_energy_distance` with its default skip_same=False). With d = 1 - IoU (the
  Jaccard distance, of negative type because the Tanimoto similarity is a positive-definite
  kernel) GED >= 0, and GED = 0 for identical sets.
* HM-IoU: both sets tiled to L = lcm(N, M) members (samples L/N times, annotations L/M times),
  a Hungarian matching (scipy.optimize.linear_sum_assignment) minimising the summed cost
  1 - IoU over the L x L matrix, and the mean IoU of the L matched pairs; in [0, 1], 1 for
  identical sets. (Not in the AmbDiffSeg code; the usual definition from the literature.)
* NCC: see `ncc` (the original's `variance_ncc_dist`, averaged over annotations as its
  `get_ambiguous_metrics` does).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ..errors import ImageTypeError, InvalidArgumentError

_XENT_EPS = 1e-8  # the original's pixel_wise_xent eps: log(p + eps)
_NCC_EPS = 1e-8  # the original's ncc eps, added to the normalisers
_CONSTANT_RTOL = 1e-11  # a map with std <= this * max |map| is constant (rounding noise)


# ----------------------------------------------------------------------------- validation


def _to_numpy(x, name: str) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists and the like
        raise ImageTypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)):
        raise ImageTypeError(f"{name} must be a bool, integer or float array (a numpy array or torch tensor), "
                        f"got {type(x).__name__} of dtype {arr.dtype}")
    return arr


def _as_binary(x, name: str) -> np.ndarray:
    """`x` as a bool array, after checking that it holds only 0 and 1."""
    arr = _to_numpy(x, name)
    if arr.dtype == bool:
        return arr
    bad = (arr != 0) & (arr != 1)  # NaN counts as bad
    if bad.any():
        values = np.unique(arr[bad])
        shown = ", ".join(repr(v.item()) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise InvalidArgumentError(f"{name} must be a binary mask with values in {{0, 1}}, found {shown}")
    return arr != 0


def _check_set(arr: np.ndarray, name: str, letter: str) -> None:
    if arr.ndim != 3:
        raise InvalidArgumentError(f"{name} must have rank 3, shape ({letter}, H, W), got rank {arr.ndim} "
                         f"with shape {arr.shape}")
    if arr.shape[0] < 1:
        raise InvalidArgumentError(f"{name} is an empty set: {letter} must be >= 1, got shape {arr.shape}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InvalidArgumentError(f"{name} has empty images: H and W must be >= 1, got shape {arr.shape}")


def _mask_sets(samples, annotations, samples_name: str = "samples") -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, P) and (M, P) bool matrices, P = H * W."""
    s = _as_binary(samples, samples_name)
    y = _as_binary(annotations, "annotations")
    _check_set(s, samples_name, "N")
    _check_set(y, "annotations", "M")
    if s.shape[1:] != y.shape[1:]:
        raise InvalidArgumentError(f"{samples_name} and annotations differ in image size (H, W): "
                         f"{s.shape[1:]} vs {y.shape[1:]}")
    return s.reshape(len(s), -1), y.reshape(len(y), -1)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU matrix of the rows of two (n, P) and (m, P) bool matrices, with IoU = 1 for two
    empty rows. Intersections are one matrix product; counts are exact in float64 (P < 2**53)."""
    af, bf = a.astype(np.float64), b.astype(np.float64)
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    out = np.ones_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


# ----------------------------------------------------------------------------- single masks


def iou(a, b) -> float:
    """Intersection over union |a n b| / |a u b| of two binary masks of one shape (normally
    (H, W)). Two empty masks give 1, one empty and one non-empty give 0."""
    a, b = _as_binary(a, "a"), _as_binary(b, "b")
    if a.shape != b.shape:
        raise InvalidArgumentError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def dice(pred, target) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of two binary masks of one shape (normally
    (H, W)). Two empty masks give 1, one empty and one non-empty give 0."""
    pred, target = _as_binary(pred, "pred"), _as_binary(target, "target")
    if pred.shape != target.shape:
        raise InvalidArgumentError(f"masks differ in shape: {pred.shape} vs {target.shape}")
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, target).sum() / total)


def dice_per_class(pred, target, num_classes: int) -> np.ndarray:
    """Dice of each foreground class 1..num_classes-1 between two class maps."""
    pred, target = np.asarray(pred), np.asarray(target)
    return np.array([dice(pred == c, target == c) for c in range(1, num_classes)])


# ----------------------------------------------------------------------------- sets of masks


def ged(samples, annotations) -> float:
    """Generalised energy distance D^2_GED between sampled masks (N, H, W) and annotations
    (M, H, W) with d = 1 - IoU (two empty masks: d = 0):

        2 mean_{i,j} d(S_i, Y_j) - mean_{i,i'} d(S_i, S_i') - mean_{j,j'} d(Y_j, Y_j'),

    every mean over the full matrix, diagonals (d = 0) included, as the original's
    `generalized_energy_distance` (skip_same=False). Returns a float >= 0 (up to rounding)."""
    s, y = _mask_sets(samples, annotations)
    d_sy = 1.0 - _pairwise_iou(s, y)
    d_ss = 1.0 - _pairwise_iou(s, s)
    d_yy = 1.0 - _pairwise_iou(y, y)
    return float(2.0 * d_sy.mean() - d_ss.mean() - d_yy.mean())


def hm_iou(samples, annotations) -> float:
    """Hungarian-matched IoU of sampled masks (N, H, W) and annotations (M, H, W).

    Both sets are tiled to L = lcm(N, M) members (each sample L/N times, each annotation L/M
    times); `scipy.optimize.linear_sum_assignment` matches them one-to-one minimising the total
    cost 1 - IoU of the L x L matrix, and the result is the mean IoU of the L matched pairs, in
    [0, 1] (two empty masks: IoU 1). The matching costs O(L^3); L = lcm(N, M) can be large for
    coprime N and M."""
    from scipy.optimize import linear_sum_assignment

    s, y = _mask_sets(samples, annotations)
    n, m = len(s), len(y)
    big_l = n * m // math.gcd(n, m)
    small = _pairwise_iou(s, y)  # the tiled matrix only repeats these N x M values
    tiled = small[np.arange(big_l) % n][:, np.arange(big_l) % m]
    rows, cols = linear_sum_assignment(1.0 - tiled)
    return float(tiled[rows, cols].mean())


def _is_constant(a: np.ndarray) -> bool:
    """Constant up to rounding: std <= 1e-11 * max |a|. A mathematically constant map (e.g.
    2p(1-p) at p = 1/3 and p = 2/3) comes out of float sums with ~1e-15 relative noise, which
    the original's eps would blow up to ~1e-7-sized results; real variation of these maps is
    many orders of magnitude above the threshold."""
    return bool(a.std() <= _CONSTANT_RTOL * np.abs(a).max())


def _ncc_original(a: np.ndarray, v: np.ndarray) -> float:
    """The original's zero-normalised cross-correlation of two maps, with its eps:
    sum((a - mean a) / (std a * P + eps) * (v - mean v) / (std v + eps)), population std. It is
    Pearson's correlation up to the eps; a constant map (zero std, up to rounding) gives exactly
    0, the value the original's eps produces for an exactly constant map."""
    a, v = a.ravel(), v.ravel()
    if _is_constant(a) or _is_constant(v):
        return 0.0
    a_n = (a - a.mean()) / (a.std() * a.size + _NCC_EPS)
    v_n = (v - v.mean()) / (v.std() + _NCC_EPS)
    return float(np.dot(a_n, v_n))


def ncc(sample_probs, annotations) -> float:
    """The NCC of the AmbDiffSeg evaluation (its `variance_ncc_dist` in src/amb_diff_seg/utils.py,
    the S_NCC of PHiSeg, averaged over the annotations by `get_ambiguous_metrics`).

    `sample_probs` (N, H, W) are the sampled masks (binary, as the paper passes them) or per-pixel
    foreground probabilities in [0, 1]; `annotations` (M, H, W) are binary. Every map is made
    two-class one-hot, s = (1 - p, p) and y = (1 - a, a), and with the pixel-wise cross-entropy
    xent(s, t) = -sum_c t_c log(s_c + 1e-8):

    * E_ss = mean_i xent(s_i, mean_i' s_i'): the expected cross-entropy of the samples against
      their mean map (for binary samples |log 1e-8| * 2 p (1 - p) up to O(1e-8): a variance map);
    * E_sy_j = mean_i xent(s_i, y_j) for each annotation j (for binary samples
      |log 1e-8| * |a_j - p|: the fraction of samples disagreeing with annotation j);
    * NCC = mean_j ncc(E_ss, E_sy_j), ncc the zero-normalised cross-correlation with the
      original's eps, sum((a - mean a) / (std a * P + 1e-8) * (v - mean v) / (std v + 1e-8))
      over the P pixels, population std: Pearson's correlation up to the eps.

    Constant maps: when E_ss or E_sy_j is constant over the image (zero std, e.g. all samples
    identical, or a single pixel) that annotation's correlation counts as 0, the value the
    original's eps gives for an exactly constant map. "Constant" allows for rounding: a map with
    std <= 1e-11 * max |map| counts as constant, because float sums leave ~1e-15 relative noise
    in mathematically constant maps (2p(1-p) at p = 1/3 vs 2/3), which the original's eps turns
    into ~1e-7-sized arbitrary results. The result lies in [-1, 1]; it is not symmetric in its
    arguments.
    """
    p = _to_numpy(sample_probs, "sample_probs")
    _check_set(p, "sample_probs", "N")
    if p.dtype == bool:
        p = p.astype(np.float64)
    elif not np.all((p >= 0) & (p <= 1)):  # NaN fails too
        finite = p[~np.isnan(p)]
        found = [f"values in [{finite.min()}, {finite.max()}]"] if finite.size else []
        found += ["NaN"] if finite.size < p.size else []
        raise InvalidArgumentError("sample_probs must hold masks or probabilities with values in [0, 1], "
                         f"found {' and '.join(found)}")
    _, y = _mask_sets(p != 0, annotations, "sample_probs")  # validates annotations and sizes
    p = p.reshape(len(p), -1).astype(np.float64)
    s = np.stack([1.0 - p, p], axis=-1)  # (N, P, 2)
    mean_log = np.log(s + _XENT_EPS).mean(0)  # (P, 2): mean_i log(s_i + eps)
    # xent is linear in its target, so the mean over samples moves onto the logs
    e_ss = -np.sum(s.mean(0) * mean_log, axis=-1)  # (P,)
    y1 = y.astype(np.float64)
    e_sy = -(y1 * mean_log[:, 1] + (1.0 - y1) * mean_log[:, 0])  # (M, P)
    return float(np.mean([_ncc_original(e_ss, e_sy_j) for e_sy_j in e_sy]))
