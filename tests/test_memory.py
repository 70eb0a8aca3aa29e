"""The memory rule (ldseg_rt.memory): requests whose results would exceed memory_limit are
refused before any work, and the estimate counts what the results really hold."""
from unittest import mock

import numpy as np
import pytest
import torch

from ldseg_rt import EngineOptions, InvalidArgumentError, Segmenter
from ldseg_rt.memory import DEFAULT_MEMORY_LIMIT, check_memory, volume_bytes_per_voxel


def image(rng, h, w):
    return rng.uniform(0, 255, size=(h, w)).astype(np.float32)


def test_an_image_past_the_limit_is_refused_before_any_work(small_model, rng):
    seg = Segmenter(small_model, backend="torch", device="cpu", memory_limit=2 ** 20)
    big = image(rng, 300, 300)
    with pytest.raises(InvalidArgumentError, match=r"needs about [0-9.]+ [MG]iB .*return_samples=False"):
        with mock.patch("ldseg_rt.segmenter.prepare", side_effect=AssertionError("preprocessing began")):
            seg.sample(big, n=16, steps=3, seed=1)
    with pytest.raises(InvalidArgumentError, match="needs about"):  # the torch form is sized the same way
        seg.sample(torch.from_numpy(np.array(big)), n=16, steps=3, seed=1)
    # Without the n maps the same request fits, and gives the same probabilities, mask and uncertainty.
    img = image(rng, 100, 100)
    lean = seg.sample(img, n=16, steps=3, seed=1, return_samples=False)
    full = Segmenter(small_model, backend="torch", device="cpu").sample(img, n=16, steps=3, seed=1)
    assert lean.samples is None and full.samples.shape == (16, 100, 100)
    for name in ("probs", "mask", "uncertainty", "latents"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name))


def test_a_volume_past_the_limit_is_refused_before_any_slice(small_model):
    seg = Segmenter(small_model, backend="torch", device="cpu", memory_limit=2 ** 20)
    with mock.patch.object(seg, "sample_batch", side_effect=AssertionError("a slice was sampled")):
        with pytest.raises(InvalidArgumentError, match=r"volume of 200x200x10 voxels .* needs about 6.5 MiB .*"
                                                       r"\(1.0 MiB\)"):
            seg.segment_volume(np.zeros((200, 200, 10), np.float32), n=4)


@pytest.mark.parametrize("return_samples", [False, True])
def test_the_volume_estimate_is_what_the_results_hold(small_model, rng, return_samples):
    """Counted independently: the bytes of the returned arrays."""
    seg = Segmenter(small_model, backend="torch", device="cpu")
    shape, n = (23, 19, 3), 3
    res = seg.segment_volume(rng.random(shape).astype(np.float32), n=n, steps=2, seed=1,
                             return_samples=return_samples, progress=False)
    held = sum(a.nbytes for a in (res.mask, res.probs, res.uncertainty, res.samples) if a is not None)
    assert held == volume_bytes_per_voxel(seg.config.num_classes, n, return_samples) * int(np.prod(shape))


def test_the_limit_is_a_positive_number_of_bytes():
    assert EngineOptions().memory_limit == DEFAULT_MEMORY_LIMIT
    for bad in (0, -1, 1.5, True, "8G"):
        with pytest.raises(InvalidArgumentError, match="memory_limit must be a positive number of bytes"):
            EngineOptions(memory_limit=bad)
    check_memory((10, 10), 8, 800, "exactly at the limit", "")  # equal fits
    with pytest.raises(InvalidArgumentError, match=r"just over needs about .*: do less"):
        check_memory((10, 10), 8, 799, "just over", "do less")
