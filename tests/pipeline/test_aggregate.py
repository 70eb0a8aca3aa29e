"""ldseg_rt.aggregate on the CPU: class_argmax against torch.argmax (ties included), and the
Aggregator fed in chunks against a float64 numpy aggregation of all samples at once."""
import math

import numpy as np
import pytest
import torch

from ldseg_rt.pipeline.aggregate import Aggregator, aggregate, class_argmax, resize_probs


def float64_aggregate(probs: np.ndarray):
    p = probs.astype(np.float64)
    mean = p.mean(axis=0)
    entropy = -(mean * np.log(np.maximum(mean, 1e-12))).sum(axis=0) / math.log(p.shape[1])
    return p.argmax(axis=1), mean, mean.argmax(axis=0), np.clip(entropy, 0, 1)


@pytest.mark.parametrize("shape,dim", [((5, 2, 7, 9), 1), ((3, 4, 1, 13), 1), ((6, 33, 17), 0), ((2, 1, 3, 3), 1)])
def test_class_argmax_matches_torch_argmax(rng, shape, dim):
    values = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    values[values > 1.0] = 1.0  # many exact ties: the first maximum wins, as in torch
    got = class_argmax(values, dim)
    assert got.dtype == torch.uint8
    assert torch.equal(got.long(), values.argmax(dim))


@pytest.mark.parametrize("n,c,h,w,chunk", [(16, 2, 32, 48, 4), (7, 3, 17, 5, 3), (5, 4, 1, 1, 1), (3, 2, 9, 9, 8)])
def test_streamed_chunks_equal_float64_of_all(rng, n, c, h, w, chunk):
    logits = 3 * rng.standard_normal((n, c, h, w))
    probs = torch.softmax(torch.from_numpy(logits), dim=1).float()
    aggregator = Aggregator()
    for start in range(0, n, chunk):
        aggregator.add(probs[start:start + chunk])
    samples, mean, mask, uncertainty = aggregator.result()
    want = float64_aggregate(probs.numpy())
    assert samples.dtype == mask.dtype == torch.uint8 and mean.dtype == uncertainty.dtype == torch.float32
    assert np.array_equal(samples.numpy(), want[0])
    np.testing.assert_allclose(mean.numpy(), want[1], rtol=0, atol=1e-6)
    sorted_mean = np.sort(want[1], axis=0)
    separated = sorted_mean[-1] - sorted_mean[-2] > 1e-6 if c > 1 else np.ones((h, w), bool)
    assert np.array_equal(mask.numpy()[separated], want[2][separated])
    np.testing.assert_allclose(uncertainty.numpy(), want[3], rtol=0, atol=1e-5)
    for got, whole in zip((samples, mean, mask, uncertainty), aggregate(probs)):
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)


def test_chunks_are_resized_to_the_output_size(rng):
    probs = torch.softmax(torch.from_numpy(rng.standard_normal((6, 3, 20, 24))).float(), dim=1)
    aggregator = Aggregator((31, 17))
    aggregator.add(probs[:4])
    aggregator.add(probs[4:])
    samples, mean, mask, uncertainty = aggregator.result()
    resized = resize_probs(probs, (31, 17))
    assert samples.shape == (6, 31, 17) and mask.shape == uncertainty.shape == (31, 17)
    assert torch.equal(samples.long(), resized.argmax(1))
    torch.testing.assert_close(mean, resized.mean(0), rtol=0, atol=1e-6)


def test_result_before_any_chunk_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        Aggregator().result()
