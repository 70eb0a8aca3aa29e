"""ldseg_rt.data.ambiguous_lesions: seeded cases whose annotation distribution is known."""
import math

import numpy as np
import pytest

from ldseg_rt.data.ambiguous_lesions import (EVAL_SEEDS, MISS_PROBABILITY, TRAIN_SEEDS, AmbiguousCase, AmbiguousDataset,
                                     make_ambiguous_case)
from ldseg_rt.errors import InvalidArgumentError


def mode_index(case, masks):
    """Which mode each mask is (-1 if none)."""
    flat = case.modes.reshape(len(case.modes), -1)
    out = []
    for m in masks.reshape(len(masks), -1):
        hit = np.flatnonzero((flat == m).all(1))
        out.append(int(hit[0]) if len(hit) else -1)
    return np.array(out)


def iou(a, b):
    """IoU with the convention of the paper: two empty masks have IoU 1."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def seeds(rng, k):
    return [int(s) for s in rng.integers(0, 10 ** 6, size=k)]


def test_deterministic_per_seed(rng):
    for seed in seeds(rng, 4):
        for size in (32, 48):
            a, b = make_ambiguous_case(size, seed), make_ambiguous_case(size, seed)
            for name in ("image", "modes", "probs", "lesions"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert a.miss == b.miss and a.seed == b.seed == seed
            np.testing.assert_array_equal(a.annotations(4, 7), b.annotations(4, 7))
            np.testing.assert_array_equal(a.sample(9, 3), b.sample(9, 3))
    x, y = make_ambiguous_case(32, 1), make_ambiguous_case(32, 2)
    assert not np.array_equal(x.image, y.image)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_case_structure(rng, size):
    for seed in seeds(rng, 25):
        case = make_ambiguous_case(size, seed)
        assert isinstance(case, AmbiguousCase) and case.size == size
        assert case.image.shape == (size, size) and case.image.dtype == np.float32
        assert case.image.min() >= 0 and case.image.max() <= 1
        k = len(case.probs)
        assert case.modes.shape == (k, size, size) and case.modes.dtype == np.uint8
        assert set(np.unique(case.modes)) <= {0, 1}
        assert case.probs.dtype == np.float64 and np.all(case.probs > 0)
        assert case.probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert 2 <= k <= 6
        flat = case.modes.reshape(k, -1)
        assert len({m.tobytes() for m in flat}) == k  # pairwise distinct
        assert len(case.lesions) == len(case.miss) in (1, 2)
        # Every mode is a union of lesion outlines, nothing outside a lesion's neighbourhood.
        near = np.zeros((size, size), bool)
        for lesion in case.lesions.astype(bool):
            ys, xs = np.nonzero(lesion)
            near[max(ys.min() - 3 * max(1, size // 32), 0):ys.max() + 3 * max(1, size // 32) + 1,
                 max(xs.min() - 3 * max(1, size // 32), 0):xs.max() + 3 * max(1, size // 32) + 1] = True
        assert not np.any(case.modes.astype(bool) & ~near)
        # An empty mode only where the one lesion is a faint one, left out.
        empty = ~flat.any(1)
        if empty.any():
            assert case.miss == (MISS_PROBABILITY,)
        with pytest.raises(ValueError):
            case.image[0, 0] = 0.5  # read-only


def test_lesions_visible_where_modes_have_them(rng):
    """Each annotated lesion differs from its surroundings in the image: clear ones strongly,
    faint ones less (their median contrast is ~0.09, the lowest of 1856 was 0.029)."""
    checked = 0
    for seed in seeds(rng, 30):
        case = make_ambiguous_case(32, seed)
        image = case.image.astype(np.float64)
        for lesion, miss in zip(case.lesions.astype(bool), case.miss):
            assert any(np.any(m.astype(bool) & lesion) for m in case.modes)  # some mode has it
            inner = erode(lesion)
            ring = dilate(lesion, 4) & ~dilate(lesion, 2)
            others = np.zeros_like(lesion)
            for other in case.lesions.astype(bool):
                others |= dilate(other, 2)
            ring &= ~others
            contrast = abs(image[inner if inner.any() else lesion].mean() - image[ring].mean())
            assert contrast > (0.02 if miss > 0 else 0.1), (seed, miss, contrast)
            checked += 1
    assert checked >= 30


def erode(mask):
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def dilate(mask, r):
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def test_annotation_frequencies_match_probs(rng):
    """Chi-square goodness of fit of 4000 draws; the 0.9999 quantile for <= 5 degrees of freedom is < 26."""
    for seed in seeds(rng, 6):
        case = make_ambiguous_case(32, seed)
        n = 4000
        for draws in (case.annotations(n, rng), case.sample(n, int(rng.integers(2 ** 31)))):
            idx = mode_index(case, draws)
            assert np.all(idx >= 0)
            counts = np.bincount(idx, minlength=len(case.probs))
            expected = n * case.probs
            chi2 = ((counts - expected) ** 2 / expected).sum()
            assert chi2 < 26, (seed, counts, expected)


def test_faint_lesion_missed_with_its_probability(rng):
    found = 0
    for seed in seeds(rng, 60):
        case = make_ambiguous_case(32, seed)
        for lesion, miss in zip(case.lesions.astype(bool), case.miss):
            without = np.array([not np.any(m.astype(bool) & lesion) for m in case.modes])
            assert case.probs[without].sum() == pytest.approx(miss, abs=1e-12)
            if miss > 0:
                assert miss == pytest.approx(1 / 3)
                found += 1
        if len(case.miss) == 2:  # a clear and a faint lesion: the faint one is the one missed
            assert sorted(case.miss) == [0.0, MISS_PROBABILITY]
    assert found >= 15  # about 70% of the cases have a faint lesion


def test_boundary_levels_nest(rng):
    """A clear lesion's outlines are eroded / as painted / dilated versions of one another."""
    for seed in seeds(rng, 20):
        case = make_ambiguous_case(32, seed)
        for lesion, miss in zip(case.lesions.astype(bool), case.miss):
            if miss > 0:
                continue
            parts = sorted({(m.astype(bool) & dilate(lesion, 3)).tobytes() for m in case.modes})
            parts = sorted((np.frombuffer(p, bool).reshape(lesion.shape) for p in parts), key=np.sum)
            assert 2 <= len(parts) <= 3
            for small, big in zip(parts, parts[1:]):
                assert np.all(big >= small) and big.sum() > small.sum()


def test_shapes_vary_across_seeds(rng):
    areas, elong, kinds = [], [], set()
    masks = set()
    for seed in seeds(rng, 40):
        case = make_ambiguous_case(32, seed)
        kinds.add(case.miss)
        for lesion in case.lesions.astype(bool):
            masks.add(lesion.tobytes())
            ys, xs = np.nonzero(lesion)
            areas.append(lesion.sum())
            cov = np.cov(np.stack([ys, xs]).astype(float))
            ev = np.linalg.eigvalsh(cov)
            elong.append(math.sqrt(ev[1] / max(ev[0], 1e-9)))
    assert len(masks) == len(areas)  # no two lesions alike
    assert max(areas) > 2 * min(areas)
    assert max(elong) > 1.3 and min(elong) < 1.15
    assert len(kinds) == 3  # clear only, faint only, both


def test_oracle_ged_from_modes(rng):
    """The exact expected distance E[1 - IoU(S, Y)] of two independent draws (over the modes,
    weighted by probs: the oracle's GED terms) matches its Monte Carlo estimate from
    case.sample against case.annotations: the distribution is what the arrays say it is."""
    case = make_ambiguous_case(32, int(rng.integers(10 ** 6)))
    k = len(case.probs)
    d = np.array([[1 - iou(case.modes[i], case.modes[j]) for j in range(k)] for i in range(k)])
    assert np.all(d[~np.eye(k, dtype=bool)] > 0)
    x = mode_index(case, case.sample(3000, 1))
    y = mode_index(case, case.annotations(3000, 2))
    cross = d[x[:, None], y[None, :]].mean()
    within = case.probs @ d @ case.probs
    assert cross == pytest.approx(within, abs=0.02)


def test_dataset(rng):
    train = AmbiguousDataset(32, TRAIN_SEEDS[:5], annotators=4)
    assert len(train) == 5
    image, ann = train[2]
    case = make_ambiguous_case(32, TRAIN_SEEDS[2])
    np.testing.assert_array_equal(image, case.image)
    assert ann.shape == (4, 32, 32) and ann.dtype == np.uint8
    assert np.all(mode_index(case, ann) >= 0)
    np.testing.assert_array_equal(ann, train[2][1])  # fixed annotations per case
    assert sum(1 for _ in train) == 5
    img, mask = train.training_example(2, rng)
    assert mask.shape == (32, 32) and any(np.array_equal(mask, a) for a in ann)
    stored = {a.tobytes() for a in train[0][1]}
    picked = {train.training_example(0, rng)[1].tobytes() for _ in range(60)}
    assert picked == stored  # each pick is one of the stored annotations, all get picked
    assert TRAIN_SEEDS.start == 0 and TRAIN_SEEDS.stop <= EVAL_SEEDS.start  # disjoint ranges
    ev = AmbiguousDataset.evaluation(32, 3)
    assert list(ev.seeds) == list(EVAL_SEEDS[:3])
    assert list(AmbiguousDataset.train(32, 3).seeds) == [0, 1, 2]


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="size"):
        make_ambiguous_case(8, 0)
    with pytest.raises(InvalidArgumentError, match="seed"):
        make_ambiguous_case(32, -1)
    with pytest.raises(InvalidArgumentError, match="annotators"):
        AmbiguousDataset(32, [0], annotators=0)
    with pytest.raises(InvalidArgumentError):
        make_ambiguous_case(32, 0).annotations(-1, 0)
