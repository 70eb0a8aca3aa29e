"""The torch backend's GPU path (Triton kernels in the models, the loop on the device with the
step kernel, CUDA graphs, fp16/bf16 with fp32 norms). Without a GPU it runs on the CPU under
the Triton interpreter and must give what the plain CPU path gives."""
import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.backends.gpu_model import TritonGroupNorm, gpu_model
from ldseg_rt.errors import BackendError
from ldseg_rt.models.layers import GroupNormSiLU, SelfAttention

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def test_kernels_replace_every_groupnorm_and_attention(small_model):
    swapped = gpu_model(small_model, DEVICE, "fp32", kernels=True)
    original = dict(small_model.named_modules())
    norms = [name for name, m in original.items() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(dict(swapped.named_modules())[n], TritonGroupNorm) for n in norms)
    silu = [n for n in norms if isinstance(original[n], GroupNormSiLU)]
    assert silu and all(dict(swapped.named_modules())[n].silu for n in silu)
    assert all(m.attend is not torch.nn.functional.scaled_dot_product_attention
               for m in swapped.modules() if isinstance(m, SelfAttention))
    assert all(isinstance(m, torch.nn.GroupNorm) for n, m in small_model.named_modules() if n in norms)  # untouched


def test_networks_with_kernels_match_torch(small_model, rng):
    swapped = gpu_model(small_model, DEVICE, "fp32", kernels=True)
    cfg = small_model.config
    image = torch.from_numpy(rng.random((2, 1, cfg.image_size, cfg.image_size), dtype=np.float32))
    z = torch.from_numpy(rng.standard_normal((3, *cfg.latent_shape), dtype=np.float32))
    t = torch.from_numpy(rng.integers(0, cfg.timesteps, 3).astype(np.float32))
    with torch.inference_mode():
        z_i = small_model.image_encoder(image)
        pairs = [(small_model.image_encoder(image), swapped.image_encoder(image.to(DEVICE))),
                 (small_model.denoiser(z, z_i[:1].expand(3, -1, -1, -1), t),
                  swapped.denoiser(z.to(DEVICE), z_i[:1].expand(3, -1, -1, -1).to(DEVICE), t.to(DEVICE))),
                 (small_model.decoder(z), swapped.decoder(z.to(DEVICE)))]
    for expected, got in pairs:
        expected = expected.double()
        assert (got.cpu().double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_whole_pipeline_on_the_device_path_matches_the_cpu_path(small_model, rng):
    image = rng.random((100, 90), dtype=np.float32)
    seed = int(rng.integers(2 ** 64, dtype=np.uint64))
    reference = Segmenter(small_model, backend="torch", device="cpu").sample(image, n=2, steps=3, seed=seed, eta=1.0)
    device = Segmenter(small_model, backend="torch", device=DEVICE, kernels=True).sample(
        image, n=2, steps=3, seed=seed, eta=1.0)
    gap = np.abs(device.latents - reference.latents).max()
    print(f"latent max abs difference {gap:.2e}")
    assert gap <= 1e-4
    assert (device.samples == reference.samples).mean() >= 0.999


def test_options_and_precisions_are_checked(small_model, builtin_bundle):
    if not CUDA:
        with pytest.raises(BackendError, match="precision 'fp16' with backend 'torch' needs a CUDA device"):
            Segmenter(small_model, backend="torch", device="cpu", precision="fp16")
    with pytest.raises(BackendError, match=r"options \['kernels'\] apply to backend 'torch' only"):
        Segmenter(builtin_bundle.path, backend="onnxruntime", device="cpu", kernels=True)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_matches_the_cpu_reference(precision, rng):
    from ldseg_rt.data.phantoms import make_phantom
    image, _ = make_phantom(128, int(rng.integers(10 ** 9)))
    seed = int(rng.integers(2 ** 63))
    cpu = Segmenter("builtin:phantom", backend="torch", device="cpu").sample(image, n=16, seed=seed)
    for kernels in (True, False):
        for graphs in (True, False):
            gpu = Segmenter("builtin:phantom", backend="torch", device="cuda", precision=precision,
                            kernels=kernels, cuda_graphs=graphs)
            first, again = gpu.sample(image, n=16, seed=seed), gpu.sample(image, n=16, seed=seed)
            assert np.array_equal(first.latents, again.latents)  # graph replay = the captured run
            agreement = (first.mask == cpu.mask).mean()
            print(f"{precision} kernels={kernels} graphs={graphs}: consensus agreement {agreement:.4f}, "
                  f"latent gap {np.abs(first.latents - cpu.latents).max():.2e}")
            assert agreement >= (0.999 if precision == "fp32" else 0.995)
