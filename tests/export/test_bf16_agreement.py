"""bf16 against fp32, measured at export: the emulation against torch's real bf16 arithmetic, the
manifest's record against a recomputation, and precision="auto"'s policy on top of it."""
import numpy as np
import pytest
import torch

import ldseg_rt.backends as backends
import ldseg_rt.backends.precision as precision
from ldseg_rt import Segmenter
from ldseg_rt.backends.precision import autocast, cast_model
from ldseg_rt.bundle import Bundle
from ldseg_rt.cli.info import describe_bundle
from ldseg_rt.export.bf16_agreement import emulated_bf16, measure, random_images

CPU = torch.device("cpu")


def test_emulation_computes_like_torch_bf16(small_model, rng):
    """The denoiser on fresh inputs: the emulation moves the output away from fp32 by about as much
    as torch's bf16 autocast does (bf16 convolutions and matmuls, norms in fp32). Two bf16 runs round
    differently, so the size of the departure is what can agree, not its direction."""
    cfg = small_model.config
    z = torch.from_numpy(rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32))
    cond = torch.from_numpy(rng.standard_normal((2, *small_model.image_encoder(
        torch.zeros(1, cfg.in_channels, *cfg.image_shape)).shape[1:])).astype(np.float32))
    t = torch.from_numpy(rng.uniform(0, cfg.timesteps, 2).astype(np.float32))
    with torch.inference_mode():
        fp32 = small_model.denoiser(z, cond, t)
        with autocast(CPU, "bf16"):
            real = cast_model(small_model, CPU, "bf16").denoiser(z, cond, t).float()
        emulated = emulated_bf16(small_model).denoiser(z, cond, t)
    departure = {name: ((x - fp32).square().mean() / fp32.square().mean()).sqrt().item()
                 for name, x in (("torch bf16", real), ("emulated", emulated))}
    print(f"relative RMS departure from fp32: {departure}")
    assert 1 / 3 < departure["emulated"] / departure["torch bf16"] < 3
    assert departure["emulated"] > 1e-3  # fp32 would agree to ~1e-7
    assert small_model.denoiser.stem.weight.dtype == torch.float32  # the caller's model is untouched


def test_the_record_is_what_it_measured(small_model, rng, monkeypatch):
    """The emulated measurement (forced, so every CPU runs it) recomputed from its own record:
    the random image drawn after the sampling seed, each precision's consensus."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    seed = int(rng.integers(2 ** 31))
    record = measure(small_model, None, [], 1, 2, seed, progress=False)
    assert record["random_images"] == 1 and record["example_images"] == 0 and record["n"] == 2
    assert record["method"].startswith("emulated")
    draws = np.random.default_rng(seed)
    assert int(draws.integers(2 ** 63)) == record["seed"]
    image = random_images(small_model.config, 1, draws)[0]
    assert image.shape == tuple(small_model.config.image_shape) and image.min() == 0 and image.max() == 255
    masks = [Segmenter(m, backend="torch", device="cpu").sample(image, n=2, seed=record["seed"]).mask
             for m in (small_model, emulated_bf16(small_model))]
    assert record["agreement"] == record["worst_image"] == (masks[0] == masks[1]).mean()


def with_record(bundle: Bundle, agreement) -> Bundle:
    manifest = dict(bundle.manifest)
    if agreement is not None:
        manifest["precision"] = {"bf16": {"agreement": agreement, "worst_image": agreement, "random_images": 4,
                                          "example_images": 0, "n": 16, "seed": 1, "method": "emulated: test"}}
    return Bundle(bundle.path, manifest, {name: bundle.read(name) for name in manifest["files"]})


@pytest.mark.parametrize("has_bf16,agreement,want", [(True, 0.9995, "bf16"), (True, 0.998, "fp32"),
                                                     (True, None, "fp32"), (False, 0.9995, "fp32")])
def test_auto_precision_uses_bf16_only_where_measured_and_supported(builtin_bundle, monkeypatch, has_bf16,
                                                                    agreement, want):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: has_bf16)
    bundle = with_record(builtin_bundle, agreement)
    assert backends.choose_precision("openvino", bundle, CPU) == want
    assert backends.choose_precision("onnxruntime", bundle, CPU) == "fp32"
    info = describe_bundle(bundle)
    assert ("not measured" in info) == (agreement is None)
    if agreement is not None:
        assert f"{agreement:.4%}" in info and ("not enough" in info) == (agreement < backends.BF16_MIN_AGREEMENT)
