"""Segmenter on the CPU: the public API end to end, against the model and the oracle."""
import math

import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.diffusion.oracle import reference_sample
from ldseg_rt.diffusion.tables import ldseg_table
from ldseg_rt.pipeline.preprocess import prepare


@pytest.fixture(scope="module")
def seg(small_model):
    return Segmenter(small_model, backend="torch", device="cpu")


def image(rng, h, w):
    return rng.uniform(0, 255, size=(h, w)).astype(np.float32)


def assert_class_maps_match(samples, probs, gap=1e-5):
    """samples == argmax of probs wherever the top two classes are more than `gap` apart (the
    backend's channels_last decoder may round near-ties the other way)."""
    top = np.sort(probs, axis=1)
    decided = top[:, -1] - top[:, -2] > gap
    assert decided.mean() > 0.99
    assert np.array_equal(samples[decided], probs.argmax(1)[decided])


@pytest.mark.parametrize("h,w", [(128, 128), (37, 53), (300, 211)])
def test_outputs_at_input_resolution(seg, rng, h, w):
    res = seg.sample(image(rng, h, w), n=3, steps=4, seed=int(rng.integers(2 ** 63)))
    k = seg.config.num_classes
    assert res.samples.shape == (3, h, w) and res.samples.dtype == np.uint8 and res.samples.max() < k
    assert res.probs.shape == (k, h, w) and res.probs.dtype == np.float32
    assert res.mask.shape == res.uncertainty.shape == (h, w) and res.mask.dtype == np.uint8
    np.testing.assert_allclose(res.probs.sum(0), 1.0, rtol=1e-5)
    assert np.array_equal(res.mask, res.probs.argmax(0))
    p = res.probs.astype(np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(0) / math.log(k)
    np.testing.assert_allclose(res.uncertainty, np.clip(entropy, 0, 1), atol=1e-5)
    assert set(res.timings) == {"preprocess", "encode", "sample", "decode", "postprocess", "total"}


def test_pipeline_matches_model_and_float64_oracle(seg, small_model, rng):
    """latents: C++ loop vs float64 reference on the same network; samples and probs: the
    decoder run on those latents, aggregated in numpy."""
    img, seed, n, steps, eta = image(rng, 128, 128), int(rng.integers(2 ** 63)), 4, 6, 0.5
    res = seg.sample(img, n=n, steps=steps, seed=seed, eta=eta)
    with torch.no_grad():
        z_i = small_model.image_encoder(torch.from_numpy(prepare(img, seg.config).pixels[None]))
        cond = z_i.repeat(n, 1, 1, 1)

        def denoise(z, t):
            return small_model.denoiser(torch.from_numpy(z), cond, torch.from_numpy(t)).numpy()

        want = reference_sample(denoise, [seed], n, seg.config.latent_shape, ldseg_table(steps, eta))
        assert np.abs(res.latents - want).max() <= 1e-5 * np.abs(want).max()
        probs = small_model.decoder(torch.from_numpy(res.latents)).numpy().astype(np.float64)
    assert_class_maps_match(res.samples, probs)
    np.testing.assert_allclose(res.probs, probs.mean(0), atol=1e-6)


def test_sample_k_does_not_depend_on_n_or_batch(seg, rng):
    imgs = [image(rng, 128, 128), image(rng, 90, 70), image(rng, 128, 100)]
    seeds = [int(s) for s in rng.integers(2 ** 63, size=3)]
    alone = seg.sample(imgs[1], n=1, steps=5, seed=seeds[1])
    sixteen = seg.sample(imgs[1], n=16, steps=5, seed=seeds[1])
    batch = seg.sample_batch(imgs, n=16, steps=5, seed=seeds)
    np.testing.assert_allclose(sixteen.latents[0], alone.latents[0], rtol=0, atol=1e-5)
    assert np.array_equal(sixteen.samples[0], alone.samples[0])
    np.testing.assert_allclose(batch[1].latents, sixteen.latents, rtol=0, atol=1e-5)
    assert np.array_equal(batch[1].samples, sixteen.samples)
    shared = seg.sample_batch(imgs[:2], n=2, steps=5, seed=seeds[1])
    np.testing.assert_allclose(shared[1].latents, sixteen.latents[:2], rtol=0, atol=1e-5)


def test_torch_in_torch_out(seg, rng):
    img = image(rng, 50, 61)
    res_np = seg.sample(img, n=2, steps=3, seed=5)
    res_t = seg.sample(torch.from_numpy(img), n=2, steps=3, seed=5)
    for name in ("samples", "probs", "mask", "uncertainty"):
        got = getattr(res_t, name)
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        np.testing.assert_allclose(got.numpy(), getattr(res_np, name), atol=1e-6)


def test_encoder_once_per_image_and_one_batched_call_per_step(small_model, rng):
    seg = Segmenter(small_model, backend="torch")
    calls = []
    for stage in ("encode", "denoise", "decode"):
        inner = getattr(seg.backend, stage)

        def counted(first, *rest, _inner=inner, _stage=stage):
            calls.append((_stage, len(first)))
            return _inner(first, *rest)

        setattr(seg.backend, stage, counted)
    seg.sample_batch([image(rng, 128, 128), image(rng, 40, 40)], n=3, steps=4, seed=[1, 2])
    assert calls == [("encode", 2)] + [("denoise", 6)] * 4 + [("decode", 3)] * 2


def test_preprocessing_scales_and_resizes(rng):
    from ldseg_rt.configs import get_config
    cfg = get_config("small")
    img = rng.uniform(-50, 300, size=(128, 128))
    got = prepare(img, cfg).pixels
    lo, hi = np.percentile(img, [0.5, 99.5])
    np.testing.assert_allclose(got[0], np.clip((img - lo) / (hi - lo), 0, 1), rtol=1e-6, atol=1e-7)
    small = prepare(rng.integers(0, 4096, size=(33, 47)).astype(np.uint16), cfg)
    assert small.pixels.shape == (1, 128, 128) and small.size == (33, 47)
    assert small.pixels.min() == 0.0 and small.pixels.max() == 1.0


def test_glas512_end_to_end_rgb(rng):
    seg = Segmenter.from_config("glas512", seed=0, backend="torch", device="cpu")
    img = rng.integers(0, 256, size=(100, 77, 3), dtype=np.uint8)
    res = seg.sample(img, n=2, steps=2, seed=3)
    assert res.samples.shape == (2, 100, 77) and res.probs.shape == (2, 100, 77)
    assert res.latents.shape == (2, 1, 32, 32)


def test_decoding_in_chunks_equals_decoding_all_at_once(small_model, rng, monkeypatch):
    """The CPU decodes a few samples per call and aggregates as it goes; n=7 in chunks of
    3, 3 and 1 gives what decoding the 7 latents at once and aggregating in float64 gives."""
    import ldseg_rt.backends.base as base
    monkeypatch.setattr(base, "CPU_DECODE_BATCH", 3)
    seg = Segmenter(small_model, backend="torch", device="cpu")
    res = seg.sample(image(rng, 128, 128), n=7, steps=3, seed=int(rng.integers(2 ** 63)))
    with torch.no_grad():
        probs = small_model.decoder(torch.from_numpy(res.latents)).numpy().astype(np.float64)
    assert_class_maps_match(res.samples, probs)
    np.testing.assert_allclose(res.probs, probs.mean(0), atol=1e-6)


def test_model_name_and_digest_identify_what_was_loaded(builtin_bundle, small_model, tmp_path):
    import hashlib

    from ldseg_rt.bundle import DIGEST, load_bundle
    from ldseg_rt.models.checkpoint import BUILTIN_DIR, save_checkpoint

    builtin = Segmenter("builtin:phantom")
    assert builtin.model_name == "phantom"
    assert builtin.model_sha256 == hashlib.sha256((BUILTIN_DIR / "phantom.pt").read_bytes()).hexdigest()
    bundled = Segmenter(str(builtin_bundle.path), backend="onnxruntime")
    assert bundled.model_name == "phantom"
    assert bundled.model_sha256 == load_bundle(builtin_bundle.path).manifest[DIGEST]
    save_checkpoint(small_model, tmp_path / "knee_v2.pt")
    checkpoint = Segmenter(str(tmp_path / "knee_v2.pt"))
    assert checkpoint.model_name == "knee_v2"
    assert checkpoint.model_sha256 == hashlib.sha256((tmp_path / "knee_v2.pt").read_bytes()).hexdigest()
    in_memory = Segmenter(small_model)
    assert (in_memory.model_name, in_memory.model_sha256) == (small_model.config.name, None)
