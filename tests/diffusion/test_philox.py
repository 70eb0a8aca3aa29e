"""The Philox4x32-10 noise: C++ (ldseg_rt._C) against numpy (ldseg_rt.philox)."""
import math

import numpy as np
import pytest

from ldseg_rt import _C
from ldseg_rt.diffusion import constants, philox

# Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
IMPLS = {"cpp": _C.philox4x32, "numpy": philox.philox4x32}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(impl, counter, key, expected):
    out = IMPLS[impl](np.array([counter], dtype=np.uint32), key)
    assert out.dtype == np.uint32 and out.shape == (1, 4)
    assert tuple(int(x) for x in out[0]) == expected


def test_shared_constants_come_from_the_extension():
    """csrc/constants.h is the one source: Python reads it through the extension, and the C++
    loop's first latent is the numpy twin's draw at STREAM_INIT, renormalised with RENORM_EPS."""
    assert (constants.STREAM_INIT, constants.STREAM_STEP, constants.RENORM_EPS) == \
        (_C.STREAM_INIT, _C.STREAM_STEP, _C.RENORM_EPS) == (0, 1, 1e-5)
    assert constants.PREDICTIONS == _C.PREDICTIONS == ("eps", "x", "v")
    assert constants.TABLE_COLUMNS == _C.TABLE_COLUMNS and constants.COLUMN["sigma"] == 6
    identity = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])  # x prediction, z_prev = z
    got = _C.sample(denoise=lambda z, t: np.zeros_like(z), seeds=np.array([11], np.uint64), n=1,
                    latent_shape=(1, 3, 5), table=identity, prediction="x", clip=0.0, renormalize=True, threads=1)

    def renormalized(z):
        return (z - z.mean()) / (z.std() + constants.RENORM_EPS)
    want = renormalized(renormalized(philox.normal(11, 0, 0, constants.STREAM_INIT, 15)))
    np.testing.assert_allclose(got.reshape(-1), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("trial", range(5))
def test_raw_bits_cpp_equal_numpy(trial):
    rng = np.random.default_rng(trial)
    counters = rng.integers(0, 2**32, size=(10_000, 4), dtype=np.uint64).astype(np.uint32)
    key = tuple(int(k) for k in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    assert np.array_equal(_C.philox4x32(counters, key), philox.philox4x32(counters, key))


def test_philox_rejects_bad_counter_shape():
    for impl in IMPLS.values():
        with pytest.raises(ValueError, match="shape"):
            impl(np.zeros((3, 3), dtype=np.uint32), (0, 0))


@pytest.mark.parametrize("numel", [0, 1, 3, 4, 5, 1023])
@pytest.mark.parametrize(
    "seed,sample,step,stream",
    [(0, 0, 0, 0), (1, 3, 7, 1), (2**64 - 1, 2**32 - 1, 2**32 - 1, 1), (0xDEADBEEF12345678, 15, 999, 0)],
)
def test_normals_cpp_equal_numpy(seed, sample, step, stream, numel):
    cpp = _C.normal(seed, sample, step, stream, numel)
    ref = philox.normal(seed, sample, step, stream, numel)
    assert cpp.dtype == ref.dtype == np.float64
    assert cpp.shape == ref.shape == (numel,)
    np.testing.assert_allclose(cpp, ref, rtol=0, atol=1e-12)


def test_normals_follow_the_box_muller_definition():
    r = philox.philox4x32(np.array([[0, 5, 2, 1]], dtype=np.uint32), (9, 0))[0].astype(np.float64)
    u = (r + 0.5) / 2.0**32
    rad01, rad23 = math.sqrt(-2 * math.log(u[0])), math.sqrt(-2 * math.log(u[2]))
    expected = [
        rad01 * math.cos(2 * math.pi * u[1]),
        rad01 * math.sin(2 * math.pi * u[1]),
        rad23 * math.cos(2 * math.pi * u[3]),
        rad23 * math.sin(2 * math.pi * u[3]),
    ]
    # seed 9 -> key (9, 0); counter (block 0, step 5, sample 2, stream 1)
    np.testing.assert_allclose(_C.normal(9, 2, 5, 1, 4), expected, rtol=0, atol=1e-14)


def test_prefix_does_not_depend_on_numel():
    full = _C.normal(42, 1, 2, 1, 1023)
    for numel in (1, 3, 5, 64):
        assert np.array_equal(_C.normal(42, 1, 2, 1, numel), full[:numel])


def test_normals_look_standard_normal():
    n = 1_000_000
    x = _C.normal(1234, 0, 0, 0, n)
    # mean ~ N(0, 1/n), std ~ N(1, 1/(2n)): 6 standard errors is a ~1e-9 false alarm rate.
    assert abs(x.mean()) < 6 / math.sqrt(n)
    assert abs(x.std() - 1) < 6 / math.sqrt(2 * n)
    # Kolmogorov-Smirnov: P(sqrt(n) * D > 2.6) ~ 2 exp(-2 * 2.6^2) ~ 3e-6.
    xs = np.sort(x)
    cdf = 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(xs / math.sqrt(2)).astype(np.float64))
    d = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert math.sqrt(n) * d < 2.6
    # Each lane alone is standard normal too, and lanes of a block are uncorrelated
    # (a wrong Box-Muller pairing would show here).
    lanes = x.reshape(-1, 4)
    m = lanes.shape[0]
    for lane in range(4):
        assert abs(lanes[:, lane].mean()) < 6 / math.sqrt(m)
        assert abs(lanes[:, lane].std() - 1) < 6 / math.sqrt(2 * m)
    corr = np.corrcoef(lanes.T)
    assert np.all(np.abs(corr - np.eye(4)) < 6 / math.sqrt(m))


def test_different_keys_and_counters_give_different_streams():
    base = (7, 1, 3, 0)
    variants = [
        (8, 1, 3, 0),  # seed
        (7 + 2**32, 1, 3, 0),  # seed high word (second key word)
        (7, 2, 3, 0),  # sample
        (7, 1, 4, 0),  # step
        (7, 1, 3, 1),  # stream
    ]
    streams = [_C.normal(*args, 4096) for args in [base, *variants]]
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            assert not np.any(streams[i] == streams[j])
            assert abs(np.corrcoef(streams[i], streams[j])[0, 1]) < 6 / math.sqrt(4096)


def test_normal_rejects_out_of_range_words():
    with pytest.raises(ValueError):
        philox.normal(-1, 0, 0, 0, 4)
    with pytest.raises(ValueError):
        philox.normal(0, 2**32, 0, 0, 4)
    with pytest.raises(TypeError):
        _C.normal(-1, 0, 0, 0, 4)
    with pytest.raises(TypeError):
        _C.normal(0, 2**32, 0, 0, 4)
