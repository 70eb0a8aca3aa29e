"""The onnxruntime backend against the torch backend, and what backend="auto" picks."""
import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.backends import choose_backend, openvino_available
from ldseg_rt.bundle import Bundle
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import BackendError, BundleError


@pytest.fixture(scope="module")
def pair(builtin_bundle):
    return (Segmenter(builtin_bundle.path, backend="onnxruntime", device="cpu"),
            Segmenter(builtin_bundle.path, backend="torch", device="cpu"))


def test_same_samples_as_torch_with_the_same_seed(pair, rng):
    ort_seg, torch_seg = pair
    for _ in range(2):
        image, _ = make_phantom(int(rng.integers(96, 200)), int(rng.integers(10 ** 9)))
        seed = int(rng.integers(2 ** 63))
        a, b = ort_seg.sample(image, n=16, seed=seed), torch_seg.sample(image, n=16, seed=seed)
        latent_gap = float(np.abs(a.latents - b.latents).max())
        agreement = float((a.samples == b.samples).mean())
        print(f"latent max abs difference {latent_gap:.2e}, identical pixels {agreement:.5f}")
        assert latent_gap < 1e-3
        assert agreement >= 0.999
        assert float((a.mask == b.mask).mean()) >= 0.999
        assert np.abs(a.uncertainty - b.uncertainty).mean() < 1e-3


def test_each_network_matches_torch(pair, rng):
    ort_backend, torch_backend = pair[0].backend, pair[1].backend
    images = rng.random((3, 1, 128, 128), dtype=np.float32)
    z = rng.standard_normal((5, 1, 16, 16), dtype=np.float32)
    z_i = ort_backend.encode(images)
    assert np.allclose(z_i, torch_backend.encode(images), atol=1e-4 * np.abs(z_i).max())
    t = rng.integers(0, 1000, 5).astype(np.float32)
    eps = ort_backend.denoise(z, np.repeat(z_i[:1], 5, axis=0), t)
    assert np.allclose(eps, torch_backend.denoise(z, np.repeat(z_i[:1], 5, axis=0), t), atol=1e-4 * np.abs(eps).max())
    probs = ort_backend.decode(z)
    assert np.allclose(probs, torch_backend.decode(z), atol=1e-5)


def test_seeded_runs_are_bit_identical(pair, rng):
    image, _ = make_phantom(128, int(rng.integers(10 ** 9)))
    first, second = (pair[0].sample(image, n=4, seed=11) for _ in range(2))
    assert np.array_equal(first.latents, second.latents) and np.array_equal(first.samples, second.samples)


def test_auto_and_the_choice_is_visible(builtin_bundle, small_model):
    cpu = torch.device("cpu")
    fastest = "openvino" if openvino_available() else "onnxruntime"  # fp32 either way
    assert choose_backend(builtin_bundle, cpu) == fastest
    assert choose_backend(small_model, cpu) == "torch"
    on_cpu = Segmenter(builtin_bundle.path, device="cpu")
    assert (on_cpu.backend_name, on_cpu.precision) == (fastest, "fp32")
    assert Segmenter("builtin:phantom", device="cpu").backend_name == "torch"
    pixel_space = Bundle(builtin_bundle.path, {**builtin_bundle.manifest, "family": "ambiguous"}, {})
    assert choose_backend(pixel_space, cpu) == "onnxruntime"  # openvino ran its U-Net slower
    gpu = torch.device("cuda")
    assert choose_backend(small_model, gpu) == "torch"
    assert choose_backend(builtin_bundle, gpu) in ("tensorrt", "torch")


def test_backends_that_need_a_bundle_say_so(small_model):
    with pytest.raises(BackendError, match="export the model first"):
        Segmenter(small_model, backend="onnxruntime")
    with pytest.raises(BackendError, match="export the model first"):
        Segmenter("builtin:phantom", backend="tensorrt")


def test_unavailable_precision_is_named(builtin_bundle):
    with pytest.raises(BackendError, match="precision 'fp16' is not available with backend 'onnxruntime'"):
        Segmenter(builtin_bundle.path, backend="onnxruntime", precision="fp16")


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Segmenter(tmp_path / "absent.ldseg")


def test_from_config_exports_for_backends_that_need_a_bundle(rng):
    image = rng.random((64, 80), dtype=np.float32)
    seed = int(rng.integers(2 ** 63))
    ort_seg = Segmenter.from_config("small", seed=4, backend="onnxruntime", device="cpu")
    folder = Path(ort_seg._bundle_folder.name)
    assert ort_seg.backend_name == "onnxruntime" and folder.is_dir()
    a = ort_seg.sample(image, n=3, steps=4, seed=seed)
    b = Segmenter.from_config("small", seed=4, backend="torch", device="cpu").sample(image, n=3, steps=4, seed=seed)
    assert np.abs(a.latents - b.latents).max() < 1e-4 and (a.samples == b.samples).mean() >= 0.999
    del ort_seg
    gc.collect()
    assert not folder.exists()  # the temporary bundle went with the Segmenter
