"""sample(n="auto"): chunks of samples until the result settles, checked against the documented
rule recomputed in float64 from a fixed-n draw of the same seed."""
import math

import numpy as np
import pytest

from ldseg_rt import Segmenter
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.segmenter import AUTO_CHUNK, AUTO_MIN_N


@pytest.fixture(scope="module")
def builtin():
    return Segmenter("builtin:phantom", backend="torch", device="cpu")


def settled_after(probs: np.ndarray, tolerance: float, max_n: int) -> int:
    """The rule in float64 numpy: the first chunk end k >= AUTO_MIN_N at which the running
    consensus changed on at most `tolerance` of the pixels and the uncertainty by at most
    `tolerance` on average since the previous chunk end; max_n if none."""
    previous = None
    for k in range(AUTO_CHUNK, max_n + AUTO_CHUNK, AUTO_CHUNK):
        k = min(k, max_n)
        mean = probs[:k].mean(0)
        mask = mean.argmax(0)
        uncertainty = np.clip(-(mean * np.log(np.clip(mean, 1e-12, None))).sum(0) / math.log(len(mean)), 0, 1)
        if previous is not None and k >= AUTO_MIN_N:
            if (mask != previous[0]).mean() <= tolerance and np.abs(uncertainty - previous[1]).mean() <= tolerance:
                return k
        previous = (mask, uncertainty)
    return max_n


@pytest.mark.parametrize("tolerance", [0.02, 0.003])
def test_auto_stops_where_the_rule_says_and_keeps_the_first_samples(builtin, rng, tolerance):
    seed, max_n = int(rng.integers(2 ** 63)), 24
    image, _ = make_phantom(builtin.config.image_size, int(rng.integers(2 ** 31)))
    full = builtin.sample(image, n=max_n, seed=seed)
    probs = builtin.backend.decode(full.latents).astype(np.float64)
    auto = builtin.sample(image, n="auto", max_n=max_n, tolerance=tolerance, seed=seed)
    assert auto.n == settled_after(probs, tolerance, max_n) == len(auto.samples) == len(auto.latents)
    np.testing.assert_allclose(auto.latents, full.latents[:auto.n], rtol=0, atol=1e-5)
    np.testing.assert_allclose(auto.probs, probs[:auto.n].mean(0), atol=1e-5)
    assert (auto.samples == full.samples[:auto.n]).mean() > 0.999


def test_auto_that_never_settles_draws_max_n_and_says_so(builtin, rng):
    image, _ = make_phantom(builtin.config.image_size, int(rng.integers(2 ** 31)))
    res = builtin.sample(image, n="auto", max_n=10, tolerance=0.0, seed=3, return_samples=False)
    assert res.n == 10 and res.samples is None and len(res.latents) == 10
    assert any("max_n=10" in w and "settled" in w for w in res.warnings)


@pytest.mark.parametrize("kwargs,match", [({"n": "many"}, "positive integer or 'auto'"),
                                          ({"n": "auto", "max_n": 0}, "max_n must be a positive integer"),
                                          ({"n": "auto", "tolerance": 1.5}, r"tolerance must be a number in \[0, 1\)"),
                                          ({"n": "auto", "tolerance": "x"}, "tolerance")])
def test_bad_adaptive_arguments_are_refused(builtin, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        builtin.sample(np.zeros((32, 32), np.float32), **kwargs)
