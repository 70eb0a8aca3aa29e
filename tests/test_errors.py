"""Bad input: a clear exception from ldseg_rt.errors that names the problem, and nothing else."""
import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt import errors as E


@pytest.fixture(scope="module")
def seg():
    return Segmenter.from_config("small", seed=0, backend="torch", device="cpu")


def good():
    return np.random.default_rng(0).uniform(0, 1, size=(64, 64)).astype(np.float32)


def with_value(value):
    img = good()
    img[3, 5] = value
    return img


@pytest.mark.parametrize("img,error,match", [
    (with_value(np.nan), E.InvalidImageError, "NaN or Inf in 1 of"),
    (with_value(np.inf), E.InvalidImageError, "NaN or Inf"),
    (with_value(-np.inf), E.InvalidImageError, "NaN or Inf"),
    (np.zeros((2, 64, 64, 1), np.float32), E.InvalidImageError, r"\(H, W\) or \(H, W, C\)"),
    (np.zeros(64, np.float32), E.InvalidImageError, "got shape"),
    (np.zeros((64, 64, 3), np.float32), E.InvalidImageError, "expects 1 channel"),
    (torch.zeros(3, 64, 64), E.InvalidImageError, "expects 1 channel"),
    (np.zeros((0, 64), np.float32), E.InvalidImageError, "empty"),
    (np.zeros((64, 0, 1), np.float32), E.InvalidImageError, "empty"),
    (np.zeros((1, 1), np.float32), E.InvalidImageError, "too small"),
    (np.zeros((1, 40), np.float32), E.InvalidImageError, "too small"),
    (np.zeros((64, 64), np.float32), E.InvalidImageError, "no contrast"),
    (good()[None], E.InvalidImageError, "looks channels-first"),
    (np.array([["a", "b"], ["c", "d"]]), E.ImageTypeError, "not a real numeric type"),
    (np.zeros((8, 8), dtype=bool), E.ImageTypeError, "not a real numeric type"),
    (np.zeros((8, 8), dtype=np.complex64), E.ImageTypeError, "not a real numeric type"),
    (np.zeros((8, 8), dtype=object), E.ImageTypeError, "not a real numeric type"),
    (torch.zeros(8, 8, dtype=torch.bool), E.ImageTypeError, "not a real numeric type"),
    ([[0.0, 1.0], [1.0, 0.0]], E.ImageTypeError, "numpy array or a torch tensor"),
])
def test_bad_images(seg, img, error, match):
    with pytest.raises(error, match=match):
        seg.sample(img, n=1, steps=2)


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "n must be a positive integer"), ({"n": -3}, "n must be"), ({"n": 2.5}, "n must be"),
    ({"n": True}, "n must be"), ({"steps": 0}, "steps must be a positive integer"),
    ({"eta": -0.1}, "eta must be"), ({"eta": float("nan")}, "eta must be"), ({"eta": True}, "eta must be"),
    ({"eta": 1e6}, r"eta must be a number in \[0, 1\]"),
    ({"steps": 1}, r"steps must be in \[2, 1000\]"), ({"steps": 10 ** 7}, r"steps must be in \[2, 1000\]"),
])
def test_bad_arguments(seg, kwargs, match):
    with pytest.raises(E.InvalidArgumentError, match=match):
        seg.sample(good(), **{"n": 1, "steps": 2, **kwargs})


def test_batch_arguments(seg):
    with pytest.raises(E.InvalidArgumentError, match="2 seeds for 1 images"):
        seg.sample_batch([good()], n=1, steps=2, seed=[1, 2])
    with pytest.raises(E.InvalidArgumentError, match="at least one image"):
        seg.sample_batch([], n=1)


def test_unknown_backend_and_precision():
    with pytest.raises(E.BackendError, match="unknown backend 'tensorflow'"):
        Segmenter.from_config("small", backend="tensorflow")
    with pytest.raises(E.BackendError, match="precision 'int4'"):
        Segmenter.from_config("small", backend="torch", precision="int4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu():
    with pytest.raises(E.DeviceError, match="no CUDA GPU is available"):
        Segmenter.from_config("small", device="cuda")


def test_unknown_device():
    with pytest.raises(E.DeviceError, match="unknown device"):
        Segmenter.from_config("small", device="gpu please")


def test_errors_are_value_or_type_errors():
    for cls in (E.InvalidImageError, E.InvalidArgumentError, E.BackendError, E.DeviceError,
                E.ModelLoadError, E.ConfigError):
        assert issubclass(cls, ValueError) and issubclass(cls, E.LdsegError)
    assert issubclass(E.ImageTypeError, TypeError)
