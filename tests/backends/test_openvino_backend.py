"""The OpenVINO backend against onnxruntime on the same graphs: the built-in model sampled with the
same seed, every network of random configurations of both families at awkward batch sizes, the
compiled-model cache, threads sharing one backend, and the precisions this CPU can and cannot run."""
import threading

import numpy as np
import pytest
import torch

from conftest import perturbed
from ldseg_rt import Segmenter
from ldseg_rt.backends import create_backend
from ldseg_rt.backends.precision import cpu_has_bf16
from ldseg_rt.bundle import load_bundle
from ldseg_rt.configs import get_config
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import BackendError
from ldseg_rt.export import export_bundle
from ldseg_rt.models import build_model

openvino = pytest.importorskip("openvino")


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def builtin_pair(builtin_bundle):
    return (Segmenter(builtin_bundle.path, backend="openvino", device="cpu"),
            Segmenter(builtin_bundle.path, backend="onnxruntime", device="cpu"))


def test_same_samples_as_onnxruntime_with_the_same_seed(builtin_pair, rng):
    ov_seg, ort_seg = builtin_pair
    assert (ov_seg.backend_name, ov_seg.precision) == ("openvino", "fp32")
    image, _ = make_phantom(int(rng.integers(96, 200)), int(rng.integers(10 ** 9)))
    seed = int(rng.integers(2 ** 63))
    a, b = ov_seg.sample(image, n=16, seed=seed), ort_seg.sample(image, n=16, seed=seed)
    print(f"latents: max relative difference {relative_gap(a.latents, b.latents):.2e}")
    assert relative_gap(a.latents, b.latents) < 1e-5
    assert float((a.samples == b.samples).mean()) >= 0.9999
    assert np.abs(a.uncertainty - b.uncertainty).max() < 1e-3


@pytest.mark.parametrize("name", ["small", "amb_small"])
def test_each_network_of_a_random_model_matches_onnxruntime(name, tmp_path, rng):
    model = perturbed(build_model(get_config(name), seed=int(rng.integers(1000))), seed=int(rng.integers(1000)))
    bundle = load_bundle(export_bundle(model, tmp_path / f"{name}.ldseg", check_batches=(1,), progress=False).path)
    ov, ort = (create_backend(b, bundle, "cpu") for b in ("openvino", "onnxruntime"))
    cfg = ov.config
    for batch in (3, 5):  # shapes the export never checked
        images = rng.random((batch, cfg.in_channels, *cfg.image_shape), dtype=np.float32)
        t = rng.uniform(0, 1, batch).astype(np.float32)
        if cfg.family == "ldseg":
            z = rng.standard_normal((batch, *cfg.latent_shape), dtype=np.float32)
            z_i = ort.encode(images)
            assert relative_gap(ov.encode(images), z_i) < 1e-5
            t *= 999
            outputs = [(ov.denoise(z, z_i, t), ort.denoise(z, z_i, t)), (ov.decode(z), ort.decode(z))]
        else:  # the pixel-space U-Net is conditioned on the image itself
            x = rng.standard_normal((batch, 1, *cfg.image_shape), dtype=np.float32)
            outputs = [(ov.denoise(x, images, t), ort.denoise(x, images, t))]
        for ours, theirs in outputs:
            assert relative_gap(ours, theirs) < 1e-5


def test_fp32_is_asked_for_explicitly_and_threads_are_not_pinned(builtin_pair):
    compiled = builtin_pair[0].backend.compiled("decoder", ((2, 1, 16, 16),))
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads()


def test_each_shape_is_compiled_once(builtin_pair):
    backend = builtin_pair[0].backend
    shapes = ((2, 1, 16, 16),)
    assert backend.compiled("decoder", shapes) is backend.compiled("decoder", shapes)
    assert backend.compiled("decoder", ((3, 1, 16, 16),)) is not backend.compiled("decoder", shapes)


def test_threads_sharing_one_backend_get_what_they_get_alone(builtin_pair, rng):
    seg = builtin_pair[0]
    images = [make_phantom(128, int(rng.integers(10 ** 9)))[0] for _ in range(3)]
    alone = [seg.sample(image, n=4, seed=i).samples for i, image in enumerate(images)]
    together = [None] * len(images)

    def work(i):
        together[i] = seg.sample(images[i], n=4, seed=i).samples

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)  # a guard against a deadlock, not a speed limit
    assert not any(thread.is_alive() for thread in threads), "threads sharing the backend deadlocked"
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_bf16_only_where_the_cpu_multiplies_bf16(builtin_bundle):
    if cpu_has_bf16():
        assert Segmenter(builtin_bundle.path, backend="openvino", precision="bf16").precision == "bf16"
    else:
        with pytest.raises(BackendError, match="AVX-512 bf16 or AMX"):
            Segmenter(builtin_bundle.path, backend="openvino", precision="bf16")


def test_refusals(builtin_bundle, small_model):
    with pytest.raises(BackendError, match="runs an exported bundle"):
        Segmenter(small_model, backend="openvino")
    with pytest.raises(BackendError, match="precision 'fp16' is not available with backend 'openvino'"):
        Segmenter(builtin_bundle.path, backend="openvino", precision="fp16")
    if not torch.cuda.is_available():
        return
    with pytest.raises(Exception, match="runs on the CPU"):
        Segmenter(builtin_bundle.path, backend="openvino", device="cuda")
