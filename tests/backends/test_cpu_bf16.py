"""The torch backend's bf16 mode on the CPU. The numbers do not depend on whether the CPU
multiplies bf16 natively (only the speed does), so the agreement test runs everywhere, with
the hardware check bypassed; what the check does on a CPU without bf16 is tested too."""
import numpy as np
import pytest
import torch

import ldseg_rt.backends.precision as precision
from ldseg_rt import Segmenter
from ldseg_rt.backends.precision import autocast, cast_model
from ldseg_rt.configs import get_config
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import BackendError
from ldseg_rt.models import build_model


@pytest.fixture
def bf16_allowed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


def test_cpu_without_bf16_is_refused_clearly(small_model, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(BackendError, match="'bf16' on the CPU needs AVX-512 bf16 or AMX.*use 'fp32'"):
        Segmenter(small_model, backend="torch", device="cpu", precision="bf16")
    with pytest.raises(BackendError, match="'fp16' with backend 'torch' needs a CUDA device"):
        Segmenter(small_model, backend="torch", device="cpu", precision="fp16")


def test_weights_are_bf16_with_norms_in_fp32(small_model, bf16_allowed):
    seg = Segmenter(small_model, backend="torch", device="cpu", precision="bf16")
    assert seg.precision == "bf16" and seg.backend_name == "torch"
    model = seg.backend.model
    convs = [m for m in model.decoder.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.decoder.to_classes.layer.weight.dtype == torch.float32  # the class head stays fp32
    assert model.decoder.norm.weight.dtype == model.decoder.norm.running_var.dtype == torch.float32
    assert small_model.decoder.to_classes.weight.dtype == torch.float32  # the caller's model is untouched


def test_class_head_in_fp32_leaves_no_ties(rng):
    """Random `small` weights, fresh latents: with the class logits in bf16, 42% of pixels had
    exactly tied top probabilities and 78% of argmaxes agreed with fp32; the fp32 head leaves
    no ties and bf16's agreement is that of the layers before it."""
    model = build_model(get_config("small"), seed=int(rng.integers(2 ** 31))).eval()
    z = torch.from_numpy(rng.standard_normal((2, *model.config.latent_shape)).astype(np.float32))
    with torch.inference_mode():
        want = model.decoder(z)
        with autocast(torch.device("cpu"), "bf16"):
            got = cast_model(model, torch.device("cpu"), "bf16").decoder(z)
    assert got.dtype == torch.float32
    top = got.topk(2, dim=1).values
    assert (top[:, 0] == top[:, 1]).float().mean() < 1e-3
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.99


def test_builtin_model_bf16_agrees_with_fp32(bf16_allowed, rng):
    """The built-in model on a fresh phantom, n=8: the bf16 consensus agrees with fp32's on
    >= 99% of pixels, while the latents show that bf16 really ran."""
    fp32 = Segmenter("builtin:phantom", backend="torch", device="cpu")
    bf16 = Segmenter(fp32.backend.model, backend="torch", device="cpu", precision="bf16")
    image, _ = make_phantom(fp32.config.image_size, int(rng.integers(10 ** 9)))
    seed = int(rng.integers(2 ** 63))
    want, got = fp32.sample(image, n=8, seed=seed), bf16.sample(image, n=8, seed=seed)
    agreement = (got.mask == want.mask).mean()
    gap = np.abs(got.latents - want.latents).max()
    print(f"consensus agreement {agreement:.4f}, uncertainty MAD "
          f"{np.abs(got.uncertainty - want.uncertainty).mean():.4f}, latent max difference {gap:.3f}")
    assert agreement >= 0.99
    assert gap > 1e-3  # fp32 would agree to ~1e-6
