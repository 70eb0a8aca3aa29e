"""The Triton aggregation kernel against its torch reference, ldseg_rt.pipeline.aggregate.aggregate
and float64 numpy, on fresh random inputs. Tolerances (fp32): samples identical; mean and
uncertainty within 1e-5 absolute; consensus identical except at pixels whose top two mean
probabilities (float64) are within 1e-6, where summation order may pick either."""
import math

import numpy as np
import pytest
import torch

from ldseg_rt.kernels.aggregate import aggregate, aggregate_reference
from ldseg_rt.pipeline.aggregate import Aggregator
from ldseg_rt.pipeline.aggregate import aggregate as library_aggregate
from ldseg_rt.pipeline.aggregate import resize_probs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPATIAL = [(h, w) for h in (1, 7, 64, 100) for w in (1, 7, 64, 100)]


def softmax_probs(rng, n, c, h, w, scale=3.0):
    logits = torch.from_numpy(scale * rng.standard_normal((n, c, h, w)))
    return torch.softmax(logits, dim=1).float().to(DEVICE)


def top_two_gap(probs):
    """Gap between the two largest float64 mean probabilities, per pixel."""
    top = probs.double().mean(dim=0).topk(2, dim=0).values
    return top[0] - top[1]


def shortfall(probs, mask):
    """How far below the largest float64 mean probability the chosen class is, per pixel."""
    mean = probs.double().mean(dim=0)
    return mean.max(dim=0).values - mean.gather(0, mask.long()[None])[0]


def float64_aggregate(probs):
    """An independent float64 numpy aggregation: argmax per sample, mean, consensus, entropy / log C."""
    p = probs.double().cpu().numpy()
    mean = p.mean(axis=0)
    entropy = -(mean * np.log(np.maximum(mean, 1e-12))).sum(axis=0) / math.log(p.shape[1])
    return (torch.from_numpy(p.argmax(axis=1).astype(np.uint8)), torch.from_numpy(mean),
            torch.from_numpy(mean.argmax(axis=0).astype(np.uint8)), torch.from_numpy(np.clip(entropy, 0, 1)))


def check_against(got, want, probs):
    samples, mean, mask, unc = got
    assert samples.dtype == mask.dtype == torch.uint8
    assert mean.dtype == unc.dtype == torch.float32
    assert samples.shape == want[0].shape and mean.shape == want[1].shape
    assert mask.shape == unc.shape == want[2].shape
    assert torch.equal(samples, want[0])
    torch.testing.assert_close(mean, want[1].float(), rtol=0, atol=1e-5)
    separated = top_two_gap(probs) > 1e-6
    assert torch.equal(mask[separated], want[2][separated])
    assert float(shortfall(probs, mask).max()) <= 1e-6  # elsewhere one of the near-tied classes
    torch.testing.assert_close(unc, want[3].float(), rtol=0, atol=1e-5)
    assert float(unc.min()) >= 0.0 and float(unc.max()) <= 1.0


@pytest.mark.parametrize("hw", SPATIAL)
def test_shapes_against_library(rng, hw):
    i = SPATIAL.index(hw)
    n, c = [(17, 5), (16, 3), (2, 2), (1, 5)][(i + i // 4) % 4]  # each H and each W meets all four
    probs = softmax_probs(rng, n, c, *hw)
    got = aggregate(probs)
    check_against(got, library_aggregate(probs), probs)
    check_against(got, aggregate_reference(probs), probs)
    check_against([t.cpu() for t in got], float64_aggregate(probs), probs.cpu())


@pytest.mark.parametrize("spatial,size,chunks,keep", [((9, 13), (20, 11), (3, 2), True), ((33, 7), None, (2, 2, 3), False),
                                                       ((4, 5, 6), None, (5,), True)])
def test_aggregator_on_the_kernel(rng, spatial, size, chunks, keep):
    """The Aggregator's fused path (what sample() runs on CUDA decoder outputs): chunks streamed,
    resized, images and a volume, against float64 numpy of all the resized samples at once."""
    probs = torch.softmax(torch.from_numpy(3 * rng.standard_normal((sum(chunks), 3, *spatial))), 1).float().to(DEVICE)
    aggregator = Aggregator(size, keep_samples=keep, fused=True)
    for start, k in zip(np.cumsum((0, *chunks)), chunks):
        aggregator.add(probs[start:start + k])
    samples, *got = aggregator.result()
    resized = resize_probs(probs, size)
    want = float64_aggregate(resized)
    assert all(t.device == probs.device for t in got)
    check_against([want[0] if samples is None else samples.cpu(), *(t.cpu() for t in got)], want, resized.cpu())
    assert (samples is None) == (not keep)
    default = Aggregator()
    default.add(probs[:1])
    assert default.fused == probs.is_cuda


@pytest.mark.parametrize("n", [1, 2, 16, 17])
@pytest.mark.parametrize("c", [2, 3, 5])
def test_sample_and_class_counts(rng, n, c):
    probs = softmax_probs(rng, n, c, 7, 100)
    got = aggregate(probs)
    check_against(got, library_aggregate(probs), probs)
    check_against(got, aggregate_reference(probs), probs)


@pytest.mark.parametrize("c", [3, 5])
def test_nearly_tied(rng, c):
    """Classes 0 and 1 within ~1e-7 of each other in every sample."""
    logits = rng.standard_normal((16, c, 33, 64))
    logits[:, 1] = logits[:, 0] + 1e-7 * rng.standard_normal((16, 33, 64))
    probs = torch.softmax(torch.from_numpy(logits), dim=1).float().to(DEVICE)
    got = aggregate(probs)
    check_against(got, library_aggregate(probs), probs)
    check_against(got, aggregate_reference(probs), probs)


def test_exact_ties_go_to_the_lowest_class(rng):
    """The kernel sums every class in the same order, so tied inputs keep tied means and the
    lowest class wins. torch's mean over samples may round the copies 1 ulp apart (its order
    varies with position), so the library is only compared where there is no tie."""
    probs = softmax_probs(rng, 5, 5, 17, 33)
    probs[:, 3] = probs[:, 1]  # tied, class 1 first
    probs[:, 4] = probs[:, 0]
    samples, mean, mask, _ = aggregate(probs)
    want = library_aggregate(probs)
    assert torch.equal(samples, want[0])
    separated = top_two_gap(probs) > 1e-6
    assert torch.equal(mask[separated], want[2][separated])
    assert torch.equal(mean[3], mean[1]) and torch.equal(mean[4], mean[0])
    assert not bool(((samples == 3) | (samples == 4)).any()) and not bool(((mask == 3) | (mask == 4)).any())
    # Uniform probabilities: every class ties, class 0 wins, uncertainty is 1.
    samples, mean, mask, unc = aggregate(torch.full((3, 4, 5, 6), 0.25, device=DEVICE))
    assert not bool(samples.any()) and not bool(mask.any())
    torch.testing.assert_close(unc, torch.ones_like(unc), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,c", [(1, 2), (2, 3), (17, 5)])
def test_one_hot_probabilities(rng, n, c):
    """Exact 0/1 inputs: sums of 0s and 1s are exact, so mean and consensus match exactly (ties
    included), and p = 0 adds nothing to the entropy."""
    labels = torch.from_numpy(rng.integers(0, c, (n, 33, 17))).to(DEVICE)
    probs = torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()
    samples, mean, mask, unc = aggregate(probs)
    want = library_aggregate(probs)
    assert torch.equal(samples, want[0]) and torch.equal(mean, want[1]) and torch.equal(mask, want[2])
    torch.testing.assert_close(unc, want[3], rtol=0, atol=1e-5)
    if n == 1:
        assert not bool(unc.any())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(rng, dtype):
    """Half inputs are summed in fp32: as the fp32 reference on the same rounded values."""
    probs = softmax_probs(rng, 16, 3, 33, 17).to(dtype)
    got = aggregate(probs)
    check_against(got, aggregate_reference(probs), probs)


def test_empty_image():
    samples, mean, mask, unc = aggregate(torch.empty(3, 2, 0, 5, device=DEVICE))
    assert samples.shape == (3, 0, 5) and mean.shape == (2, 0, 5) and mask.shape == unc.shape == (0, 5)


def test_errors(monkeypatch):
    probs = torch.full((2, 3, 4, 4), 1 / 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"probs must be \(n, C, H, W\), got shape \(3, 4, 4\)"):
        aggregate(probs[0])
    with pytest.raises(TypeError, match="probs dtype must be float32, float16 or bfloat16, got torch.float64"):
        aggregate(probs.double())
    with pytest.raises(ValueError, match="at least one sample"):
        aggregate(probs[:0])
    with pytest.raises(ValueError, match=r"number of classes must be in \[2, 256\].*got 1"):
        aggregate(probs[:, :1])
    with pytest.raises(ValueError, match=r"got 257"):
        aggregate(torch.zeros(1, 257, 1, 1, device=DEVICE))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs a CUDA tensor.*got device cpu"):
        aggregate(probs.cpu())
