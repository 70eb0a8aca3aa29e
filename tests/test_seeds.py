"""The seed rule (ldseg_rt.seeds): what a seed is, how a missing one is drawn and recorded, and
how seeds are derived, against independent computations and through the Segmenter."""
import hashlib

import numpy as np
import pytest

from ldseg_rt import InvalidArgumentError, SampleOptions, Segmenter
from ldseg_rt.seeds import SEED_LIMIT, check_seed, name_seed, resolve_seed, slice_seed


@pytest.fixture(scope="module")
def seg(small_model):
    return Segmenter(small_model, backend="torch", device="cpu")


def image(rng, h, w):
    return rng.uniform(0, 255, size=(h, w)).astype(np.float32)


@pytest.mark.parametrize("bad", [-1, SEED_LIMIT, "7", 2.0, True, np.array([1, 2])])
def test_a_seed_is_an_integer_in_0_to_2_to_the_64(bad):
    with pytest.raises(InvalidArgumentError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        check_seed(bad)
    with pytest.raises(InvalidArgumentError, match="seed must be"):  # the options refuse it the same way
        SampleOptions(seed=bad)


def test_numpy_integers_and_zero_dimensional_arrays_are_seeds(seg, rng):
    assert [check_seed(s) for s in (np.uint64(SEED_LIMIT - 1), np.int32(5), np.array(9), None)] == \
        [SEED_LIMIT - 1, 5, 9, None]
    img = image(rng, 50, 60)
    a, b = seg.sample(img, n=2, steps=3, seed=np.array(9)), seg.sample(img, n=2, steps=3, seed=9)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert a.seed == 9 and type(a.seed) is int


def test_seeds_reproduce_and_differ_and_a_drawn_one_is_recorded(seg, rng):
    img = image(rng, 64, 80)
    a, b = (seg.sample(img, n=2, steps=3, seed=11) for _ in range(2))
    c = seg.sample(img, n=2, steps=3, seed=12)
    assert np.array_equal(a.latents, b.latents) and np.array_equal(a.samples, b.samples)
    assert not np.allclose(a.latents, c.latents)
    unseeded = seg.sample(img, n=1, steps=3)
    again = seg.sample(img, n=1, steps=3, seed=unseeded.seed)
    assert np.array_equal(unseeded.latents, again.latents)
    drawn = {resolve_seed(None) for _ in range(64)}
    assert len(drawn) == 64 and all(0 <= s < 2 ** 63 for s in drawn)  # fresh, and fit a signed 64-bit field


def test_derived_seeds_are_pure_functions_of_what_they_derive_from(rng):
    seed = int(rng.integers(2 ** 63))
    ks = [int(k) for k in rng.integers(0, 10_000, size=20)]
    assert [slice_seed(seed, k) for k in ks] == [slice_seed(seed, k) for k in ks]
    assert len({slice_seed(seed, k) for k in set(ks)}) == len(set(ks))
    assert slice_seed(seed, 0) != slice_seed(seed + 1, 0)
    # A DICOM series' seed: the first 63 bits of its UID's sha256, computed here independently.
    uid = "1.2.826.0.1.3680043.8.498." + "".join(str(d) for d in rng.integers(0, 10, size=30))
    digest = hashlib.sha256(uid.encode()).hexdigest()
    assert name_seed(uid) == int(digest[:16], 16) // 2
    assert 0 <= name_seed(uid) < 2 ** 63


def test_a_slice_seed_gives_the_slice_its_own_result(seg, rng):
    """segment_volume's slice k is sample() of that slice with slice_seed(seed, k)."""
    volume = np.stack([image(rng, 30, 34) for _ in range(3)], -1)
    res = seg.segment_volume(volume, n=2, steps=3, seed=7, progress=False)
    for k in range(3):
        alone = seg.sample(volume[:, :, k], n=2, steps=3, seed=slice_seed(7, k))
        np.testing.assert_allclose(res.probs[..., k], alone.probs, atol=1e-5)
