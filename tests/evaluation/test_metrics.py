"""Metrics on hand-computed cases."""
import numpy as np
import pytest

from ldseg_rt.evaluation.metrics import dice, dice_per_class


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


# ---------------------------------------------------------------------------------------------
# Distribution metrics of ambiguous segmentation: iou, ged, hm_iou, ncc.
# ---------------------------------------------------------------------------------------------
import itertools
import math

import torch
from scipy.optimize import linprog

from ldseg_rt.evaluation.metrics import ged, hm_iou, iou, ncc


def masks(*pixel_sets, shape=(2, 2)):
    """A (K, H, W) bool stack; each argument lists the flat indices of one mask's pixels."""
    out = np.zeros((len(pixel_sets), *shape), bool)
    for k, pixels in enumerate(pixel_sets):
        out[k].ravel()[list(pixels)] = True
    return out


def random_masks(rng, k, shape):
    """k masks of random densities; about one in four is empty, one in eight full."""
    out = rng.random((k, *shape)) < rng.random((k, 1, 1))
    out[rng.random(k) < 0.25] = False
    out[rng.random(k) < 0.125] = True
    return out


# ---- independent, deliberately plain reference implementations ------------------------------

def ref_iou(a, b):
    sa = {i for i, v in enumerate(np.asarray(a).ravel().tolist()) if v}
    sb = {i for i, v in enumerate(np.asarray(b).ravel().tolist()) if v}
    return 1.0 if not (sa | sb) else len(sa & sb) / len(sa | sb)


def ref_ged(s, y):
    def mean_d(xs, zs):
        return math.fsum(1 - ref_iou(x, z) for x in xs for z in zs) / (len(xs) * len(zs))
    return 2 * mean_d(s, y) - mean_d(s, s) - mean_d(y, y)


def ref_hm_brute(s, y):
    """Tile to L = lcm(N, M) and try every permutation (small L only)."""
    big_l = len(s) * len(y) // math.gcd(len(s), len(y))
    ts = [s[i % len(s)] for i in range(big_l)]
    ty = [y[j % len(y)] for j in range(big_l)]
    table = [[ref_iou(a, b) for b in ty] for a in ts]
    return max(math.fsum(table[i][p[i]] for i in range(big_l)) for p in itertools.permutations(range(big_l))) / big_l


def ref_hm_transport(s, y):
    """The tiled assignment problem as a transportation LP (sample i supplies L/N, annotation j
    demands L/M); its polytope has integral vertices, so the LP optimum is the matching's."""
    n, m = len(s), len(y)
    big_l = n * m // math.gcd(n, m)
    gain = np.array([[ref_iou(a, b) for b in y] for a in s])
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m:(i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = [big_l // n] * n + [big_l // m] * m
    res = linprog(-gain.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun / big_l


def ref_ncc(p, y, eps=1e-8):
    """The AmbDiffSeg/PHiSeg S_NCC written out pixel by pixel: one-hot maps, cross-entropies
    -sum_c t_c log(s_c + eps), zero-normalised cross-correlation with the original's eps
    (no special case for constant maps), mean over annotations."""
    p = np.asarray(p, float).reshape(len(p), -1).tolist()
    y = np.asarray(y, float).reshape(len(y), -1).tolist()
    n, pix = len(p), len(p[0])

    def onehot(v):
        return (1 - v, v)

    def xent(samp, tgt):
        return -sum(t * math.log(s_ + eps) for s_, t in zip(samp, tgt))

    def zncc(a, v):
        ma, mv = math.fsum(a) / pix, math.fsum(v) / pix
        sa = math.sqrt(math.fsum((x - ma) ** 2 for x in a) / pix)
        sv = math.sqrt(math.fsum((x - mv) ** 2 for x in v) / pix)
        return math.fsum((x - ma) / (sa * pix + eps) * (z - mv) / (sv + eps) for x, z in zip(a, v))

    e_ss, e_sy = [], [[] for _ in y]
    for k in range(pix):
        mean_seg = tuple(sum(onehot(p[i][k])[c] for i in range(n)) / n for c in (0, 1))
        e_ss.append(sum(xent(onehot(p[i][k]), mean_seg) for i in range(n)) / n)
        for j, yj in enumerate(y):
            e_sy[j].append(sum(xent(onehot(p[i][k]), onehot(yj[k])) for i in range(n)) / n)
    return sum(zncc(e_ss, e) for e in e_sy) / len(y)


def ref_ncc_exact(s, y, eps=1e-8):
    """The same S_NCC for binary samples, with the maps kept exact: log(s_c + eps) is l1 =
    log(1 + eps) where s_c = 1 and le = log(eps) where s_c = 0, so every map value is
    A * l1 + B * le with rational A, B (Fractions). Centring is exact, so a mathematically
    constant map centres to exact zeros and correlates to exactly 0; floats enter only after."""
    from fractions import Fraction
    s = np.asarray(s).reshape(len(s), -1).astype(int).tolist()
    y = np.asarray(y).reshape(len(y), -1).astype(int).tolist()
    n, pix = len(s), len(s[0])
    l1, le = math.log(1 + eps), math.log(eps)

    def e_map(weights):  # weights(k, c) -> the target's class-c weight at pixel k
        out = []
        for k in range(pix):
            a = b = Fraction(0)
            for i in range(n):
                for c in (0, 1):
                    w = Fraction(weights(k, c)) / n
                    if (s[i][k] == 1) == (c == 1):  # s_ic = 1
                        a -= w
                    else:
                        b -= w
            out.append((a, b))
        return out

    def centred_floats(pairs):
        ma = sum(p[0] for p in pairs) / pix
        mb = sum(p[1] for p in pairs) / pix
        return [float(p[0] - ma) * l1 + float(p[1] - mb) * le for p in pairs]

    def zncc(ca, cv):
        sa = math.sqrt(math.fsum(x * x for x in ca) / pix)
        sv = math.sqrt(math.fsum(x * x for x in cv) / pix)
        return math.fsum(x / (sa * pix + eps) * z / (sv + eps) for x, z in zip(ca, cv))

    mean_seg = [(Fraction(sum(1 - s[i][k] for i in range(n)), n), Fraction(sum(s[i][k] for i in range(n)), n))
                for k in range(pix)]
    e_ss = centred_floats(e_map(lambda k, c: mean_seg[k][c]))
    return sum(zncc(e_ss, centred_floats(e_map(lambda k, c: yj[k] if c == 1 else 1 - yj[k]))) for yj in y) / len(y)


# ---- hand-computed cases --------------------------------------------------------------------
# 2x2 masks, pixels numbered 0 1 / 2 3 (flat indices).

def test_iou_and_dice_hand_cases():
    a, b = masks({0, 1}, {0, 2})  # |a n b| = 1, |a u b| = 3, |a| + |b| = 4
    assert iou(a, b) == pytest.approx(1 / 3)
    assert dice(a, b) == pytest.approx(2 / 4)
    empty, single = masks((), {3})
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0  # two empty masks agree
    assert iou(empty, single) == 0.0 and dice(single, empty) == 0.0  # one empty: 0
    assert iou(a, a) == 1.0
    assert iou(torch.tensor(a), b.astype(np.uint8)) == pytest.approx(1 / 3)


def test_identical_sets():
    # Every cross distance equals the corresponding within-set distance: GED = 0; matching each
    # mask to itself gives IoU 1 everywhere, so HM-IoU = 1.
    s = masks({0}, {0, 1}, {1, 2, 3}, ())
    assert ged(s, s) == pytest.approx(0.0, abs=1e-15)
    assert hm_iou(s, s) == 1.0
    # the same set in another order, and twice over (N = 8, M = 4: L = 8, each annotation twice)
    assert ged(s, s[::-1]) == pytest.approx(0.0, abs=1e-15)
    assert hm_iou(np.concatenate([s, s]), s[::-1]) == 1.0


def test_disjoint_single_pixels():
    # S = {pixel 0}, Y = {pixel 3}: d(S, Y) = 1, d(S, S) = d(Y, Y) = 0 -> GED = 2*1 - 0 - 0 = 2;
    # the only pair has IoU 0 -> HM-IoU = 0.
    s, y = masks({0}), masks({3})
    assert ged(s, y) == 2.0
    assert hm_iou(s, y) == 0.0
    # Two disjoint samples {0}, {1} vs two annotations {2}, {3}: all cross d = 1, within-set
    # matrices [[0, 1], [1, 0]] with mean 1/2 -> GED = 2 - 1/2 - 1/2 = 1; HM-IoU = 0.
    s, y = masks({0}, {1}), masks({2}, {3})
    assert ged(s, y) == pytest.approx(1.0)
    assert hm_iou(s, y) == 0.0


def test_all_empty_sets():
    # Empty vs empty: IoU 1, d = 0 everywhere -> GED 0, HM-IoU 1 (N = 2, M = 3).
    s, y = np.zeros((2, 3, 3), bool), np.zeros((3, 3, 3), np.int64)
    assert ged(s, y) == 0.0
    assert hm_iou(s, y) == 1.0
    # Empty samples vs one non-empty annotation: d(S, Y) = 1, within-set 0 -> GED = 2, HM-IoU 0.
    y = masks({4}, shape=(3, 3))
    assert ged(s, y) == 2.0
    assert hm_iou(s, y) == 0.0


def test_tiling_n2_m3():
    # S1 = {0}, S2 = {1}; Y1 = {0}, Y2 = {0, 1}, Y3 = {1}.
    # IoU(S, Y) = [[1, 1/2, 0], [0, 1/2, 1]].
    # HM-IoU: L = lcm(2, 3) = 6, three copies of S1 and of S2, two of each Y. Best matching:
    #   S1->Y1 twice (1 + 1), S2->Y3 twice (1 + 1), the remaining S1 and S2 -> Y2 (1/2 + 1/2):
    #   total 5 over 6 pairs -> 5/6 (any S1->Y3 or S2->Y1 pair would score 0).
    # GED: mean d(S, Y) = mean [[0, 1/2, 1], [1, 1/2, 0]] = 3/6 = 1/2;
    #   d(S, S) = [[0, 1], [1, 0]] -> mean 1/2;
    #   d(Y, Y): Y1-Y2 1/2, Y1-Y3 1, Y2-Y3 1/2, off-diagonal sum 2 * 2 = 4 -> mean 4/9;
    #   GED = 2 * 1/2 - 1/2 - 4/9 = 1/18.
    s, y = masks({0}, {1}), masks({0}, {0, 1}, {1})
    assert hm_iou(s, y) == pytest.approx(5 / 6)
    assert hm_iou(y, s) == pytest.approx(5 / 6)
    assert ged(s, y) == pytest.approx(1 / 18)
    assert ref_hm_brute(s, y) == pytest.approx(5 / 6) and ref_ged(s, y) == pytest.approx(1 / 18)


def test_ncc_hand_case():
    # 1x3 images, samples s1 = [1, 1, 0], s2 = [1, 0, 0]: foreground frequency p = [1, 1/2, 0].
    # With l1 = log(1 + eps), le = log(eps):
    #   E_ss = [-l1, -(l1 + le)/2, -l1]   (pattern [0, 1, 0]: the variance map)
    #   y1 = [1, 0, 0]: E_sy = [-l1, -(l1 + le)/2, -l1] = E_ss exactly -> NCC 1 (up to eps)
    #   y2 = [1, 1, 1]: E_sy = [-l1, -(l1 + le)/2, -le], linear in the pixel index, centred
    #   [-1, 0, 1] * c, against E_ss centred [-1/3, 2/3, -1/3] -> dot 0 -> NCC 0.
    s = np.array([[[1, 1, 0]], [[1, 0, 0]]])
    y1, y2 = np.array([[[1, 0, 0]]]), np.array([[[1, 1, 1]]])
    assert ncc(s, y1) == pytest.approx(1.0, abs=1e-8)
    assert ncc(s, y2) == pytest.approx(0.0, abs=1e-12)
    assert ncc(s, np.concatenate([y1, y2])) == pytest.approx(0.5, abs=1e-8)  # mean over annotations
    assert ncc(torch.tensor(s, dtype=torch.bool), torch.tensor(y1)) == pytest.approx(1.0, abs=1e-8)


def test_ncc_constant_maps_give_zero():
    # All samples identical: E_ss is constant (zero std) -> 0 for every annotation.
    s = np.repeat(masks({0, 1}, shape=(2, 3)), 3, axis=0)
    y = masks({0}, {1, 4}, shape=(2, 3))
    assert ncc(s, y) == 0.0
    # A single pixel: every map is constant.
    assert ncc(np.ones((2, 1, 1)), np.zeros((1, 1, 1), int)) == 0.0
    # The original's eps gives the same for exactly constant maps.
    assert ref_ncc(s, y) == pytest.approx(0.0, abs=1e-12) and ref_ncc_exact(s, y) == 0.0
    # Constant only mathematically: N = 3 samples, every pixel with p = 1/3 or 2/3, so
    # E_ss = |log eps| * 2p(1-p) is the same everywhere; the float sums differ by rounding
    # between the two kinds of pixel, which must not turn into a spurious correlation.
    s = np.array([[[1, 0, 1, 0, 1, 1]], [[0, 1, 1, 0, 0, 0]], [[0, 0, 0, 1, 0, 1]]])
    y = masks({0}, {1, 2, 5}, shape=(1, 6))
    assert ncc(s, y) == 0.0 and ref_ncc_exact(s, y) == 0.0


# ---- random cases against the reference implementations ------------------------------------

SET_SIZES = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (4, 6), (6, 4), (3, 4), (6, 6), (1, 6), (4, 2)]
SHAPES = [(1, 1), (1, 7), (5, 3), (13, 2), (3, 17), (6, 6)]


@pytest.mark.parametrize("n, m", SET_SIZES)
def test_set_metrics_against_reference(rng, n, m):
    for shape in SHAPES:
        s, y = random_masks(rng, n, shape), random_masks(rng, m, shape)
        for a, b in [(s[0], y[0]), (s[-1], s[0]), (y[-1], y[0])]:
            assert iou(a, b) == pytest.approx(ref_iou(a, b), abs=1e-12)
        g, h = ged(s, y), hm_iou(s, y)
        assert g == pytest.approx(ref_ged(s, y), abs=1e-12)
        assert h == pytest.approx(ref_hm_transport(s, y), abs=1e-9)
        big_l = n * m // math.gcd(n, m)
        if big_l <= 6:
            assert h == pytest.approx(ref_hm_brute(s, y), abs=1e-12)
        # properties: range, symmetry, invariance to the order within each set, dtypes
        assert g >= -1e-12 and 0.0 <= h <= 1.0
        assert ged(y, s) == pytest.approx(g, abs=1e-12) and hm_iou(y, s) == pytest.approx(h, abs=1e-12)
        ps, py = rng.permutation(n), rng.permutation(m)
        assert ged(s[ps], y[py]) == pytest.approx(g, abs=1e-12)
        assert hm_iou(s[ps], y[py]) == pytest.approx(h, abs=1e-12)
        assert ged(torch.tensor(s), torch.tensor(y.astype(np.int32))) == pytest.approx(g, abs=1e-12)
        assert hm_iou(s.astype(np.uint8), torch.tensor(y).long()) == pytest.approx(h, abs=1e-12)


def test_hm_iou_brute_force_wider(rng):
    # Matchings with L = 8 and L = 4 from unequal sizes, against every permutation.
    for n, m, shape in [(8, 4, (3, 3)), (4, 8, (2, 5)), (2, 8, (4, 1)), (4, 4, (3, 3))]:
        s, y = random_masks(rng, n, shape), random_masks(rng, m, shape)
        assert hm_iou(s, y) == pytest.approx(ref_hm_brute(s, y), abs=1e-12)


def test_ged_nonnegative_and_bounded(rng):
    # d = 1 - IoU is of negative type, so GED >= 0; with d in [0, 1], GED <= 2.
    for _ in range(200):
        n, m = rng.integers(1, 7, size=2)
        shape = tuple(rng.integers(1, 6, size=2))
        s, y = random_masks(rng, n, shape), random_masks(rng, m, shape)
        assert -1e-12 <= ged(s, y) <= 2.0
        assert 0.0 <= hm_iou(s, y) <= 1.0


@pytest.mark.parametrize("n, m", [(1, 1), (2, 3), (3, 2), (4, 4), (6, 1), (1, 6)])
def test_ncc_against_reference(rng, n, m):
    for shape in [(1, 5), (3, 4), (6, 2), (5, 5)]:
        s, y = random_masks(rng, n, shape), random_masks(rng, m, shape)
        got = ncc(s, y)
        assert got == pytest.approx(ref_ncc_exact(s, y), abs=1e-9)
        assert -1 - 1e-12 <= got <= 1 + 1e-12
        # probabilities in [0, 1] (the one-hot maps then carry fractions)
        probs = rng.random((n, *shape))
        probs[:, 0, 0] = rng.choice([0.0, 1.0])
        assert ncc(probs, y) == pytest.approx(ref_ncc(probs, y), abs=1e-9)
        assert ncc(torch.tensor(probs, dtype=torch.float32), y) == pytest.approx(
            ref_ncc(probs.astype(np.float32), y), abs=1e-6)


def test_ncc_binary_closed_form(rng):
    # For binary samples with foreground frequency p, E_ss = |log eps| * 2p(1-p) and
    # E_sy_j = |log eps| * |y_j - p| up to O(eps), so NCC = mean_j corr(p(1-p), |y_j - p|)
    # whenever both maps vary (the result of np.corrcoef, Pearson).
    checked = 0
    for _ in range(30):
        n, m = rng.integers(2, 7), rng.integers(1, 5)
        s, y = random_masks(rng, n, (7, 9)), random_masks(rng, m, (7, 9))
        k = s.sum(0).ravel().astype(np.int64)  # p = k / n; integer maps keep constancy exact
        var_map = k * (n - k)
        dis = [np.abs(n * yj.ravel().astype(np.int64) - k) for yj in y]
        if np.ptp(var_map) == 0 or any(np.ptp(d) == 0 for d in dis):
            continue
        want = np.mean([np.corrcoef(var_map, d)[0, 1] for d in dis])
        assert ncc(s, y) == pytest.approx(want, abs=1e-6)
        checked += 1
    assert checked > 5


def test_ncc_is_not_symmetric():
    # Samples and annotations play different parts (a variance map against disagreement maps).
    s = masks({0}, {0, 1}, {0, 1, 2}, shape=(1, 4))
    y = masks({0, 1}, {3}, shape=(1, 4))
    assert ncc(s, y) != pytest.approx(ncc(y, s), abs=1e-3)


# ---- input validation -----------------------------------------------------------------------

@pytest.mark.parametrize("fn", [ged, hm_iou, ncc])
def test_set_metric_errors(fn):
    ok = np.zeros((2, 3, 3), bool)
    first = "sample_probs" if fn is ncc else "samples"
    with pytest.raises(ValueError, match=rf"{first} must have rank 3.*rank 2"):
        fn(ok[0], ok)
    with pytest.raises(ValueError, match=r"annotations must have rank 3.*rank 4"):
        fn(ok, ok[None])
    with pytest.raises(ValueError, match=r"differ in image size"):
        fn(ok, np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match=rf"{first} is an empty set: N must be >= 1"):
        fn(ok[:0], ok)
    with pytest.raises(ValueError, match=r"annotations is an empty set: M must be >= 1"):
        fn(ok, ok[:0])
    with pytest.raises(ValueError, match=r"H and W must be >= 1"):
        fn(np.zeros((2, 0, 3)), np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match=r"annotations must be a binary mask with values in \{0, 1\}, found 2"):
        fn(ok, np.full((2, 3, 3), 2))
    with pytest.raises(ValueError, match=r"annotations must be a binary mask.*found 0\.5"):
        fn(ok, torch.full((1, 3, 3), 0.5))
    with pytest.raises(TypeError, match=r"annotations must be a bool, integer or float array"):
        fn(ok, np.full((2, 3, 3), "1"))
    with pytest.raises(TypeError, match=rf"{first} must be a bool, integer or float array"):
        fn(None, ok)
    if fn is ncc:
        with pytest.raises(ValueError, match=r"sample_probs must hold masks or probabilities with values in \[0, 1\]"):
            fn(np.full((2, 3, 3), 1.5), ok)
        with pytest.raises(ValueError, match=r"\[0, 1\].*NaN"):
            fn(np.full((2, 3, 3), np.nan), ok)
    else:
        with pytest.raises(ValueError, match=r"samples must be a binary mask.*found -1"):
            fn(np.full((2, 3, 3), -1), ok)
        with pytest.raises(ValueError, match=r"samples must be a binary mask.*found nan"):
            fn(np.full((2, 3, 3), np.nan), ok)


def test_single_mask_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        iou(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"b must be a binary mask with values in \{0, 1\}, found 3"):
        iou(np.zeros((2, 2)), np.full((2, 2), 3))
    with pytest.raises(ValueError, match=r"pred must be a binary mask"):
        dice(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"a must be a bool, integer or float array"):
        iou(np.array([["x"]]), np.zeros((1, 1)))
