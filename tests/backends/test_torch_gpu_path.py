"""The torch backend's GPU path (Triton kernels in the models, the loop on the device with the
step kernel, CUDA graphs, fp16/bf16 with fp32 norms). Without a GPU it runs on the CPU under
the Triton interpreter and must give what the plain CPU path gives."""
import contextlib
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

import ldseg_rt.backends.precision as precision_module
from conftest import perturbed
from ldseg_rt import Segmenter
from ldseg_rt.backends.device_loop import DeviceLoop
from ldseg_rt.backends.gpu_model import TritonGroupNorm, gpu_model
from ldseg_rt.backends.precision import exact_fp32, on_device, run_context
from ldseg_rt.configs import get_config
from ldseg_rt.diffusion.plan import sampling_plan
from ldseg_rt.errors import BackendError
from ldseg_rt.models import LDSeg
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


@contextlib.contextmanager
def tf32_allowed():
    """What a caller may have set: TF32 convolutions and matmuls (restored afterwards)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def test_networks_with_kernels_match_torch(small_model, rng):
    """1e-4 of the CPU's fp32 also on a GPU, where a caller's TF32 (~1e-3) must not apply to fp32 runs."""
    swapped = gpu_model(small_model, DEVICE, "fp32", kernels=True)
    cfg = small_model.config
    image = torch.from_numpy(rng.random((2, 1, cfg.image_size, cfg.image_size), dtype=np.float32))
    # 2 latents: the interpreter's cost grows with the batch, and the denoiser is most of it
    z = torch.from_numpy(rng.standard_normal((2, *cfg.latent_shape), dtype=np.float32))
    t = torch.from_numpy(rng.integers(0, cfg.timesteps, 2).astype(np.float32))
    with torch.inference_mode(), tf32_allowed(), run_context(DEVICE, "fp32"):
        z_i = small_model.image_encoder(image)
        pairs = [(small_model.image_encoder(image), swapped.image_encoder(image.to(DEVICE))),
                 (small_model.denoiser(z, z_i[:1].expand(2, -1, -1, -1), t),
                  swapped.denoiser(z.to(DEVICE), z_i[:1].expand(2, -1, -1, -1).to(DEVICE), t.to(DEVICE))),
                 (small_model.decoder(z), swapped.decoder(z.to(DEVICE)))]
    for expected, got in pairs:
        expected = expected.double()
        assert (got.cpu().double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_whole_pipeline_on_the_device_path_matches_the_cpu_path(rng):
    """`small` with one res block a level: the networks are checked above, this is the loop around
    them, and the interpreter's cost is per layer. 3 steps: the fewest with a noisy one at eta 1."""
    model = perturbed(LDSeg.from_config(dataclasses.replace(get_config("small"), num_res_blocks=1), seed=3),
                      seed=4).eval()
    image = rng.random((100, 90), dtype=np.float32)
    seed = int(rng.integers(2 ** 64, dtype=np.uint64))
    reference = Segmenter(model, backend="torch", device="cpu").sample(image, n=2, steps=3, seed=seed, eta=1.0)
    device = Segmenter(model, backend="torch", device=DEVICE, kernels=True).sample(
        image, n=2, steps=3, seed=seed, eta=1.0)
    gap = np.abs(device.latents - reference.latents).max()
    print(f"latent max abs difference {gap:.2e}")
    assert gap <= 1e-4
    assert (device.samples == reference.samples).mean() >= 0.999


def test_fp32_runs_turn_tf32_off_and_the_last_one_out_restores_it():
    """Overlapping fp32 runs on several threads: TF32 stays off while any runs, and the
    caller's setting comes back once the last one ends, whatever the order they end in."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    seen, start = [], threading.Barrier(6)

    def run(pause):
        start.wait()
        with exact_fp32():
            time.sleep(pause)
            seen.append((conv.fp32_precision, matmul.fp32_precision))

    with tf32_allowed():
        threads = [threading.Thread(target=run, args=(0.001 * (i % 3),)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [("ieee", "ieee")] * 6
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")


def test_cuda_runs_make_their_device_current(monkeypatch):
    """Triton launches on the current device: a run on cuda:1 must make cuda:1 current (checked
    through a stand-in for torch.cuda.device, so it runs without two GPUs), in IEEE fp32."""
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(precision_module.torch.cuda, "device", device)
    with tf32_allowed(), on_device(torch.device("cuda", 1), "fp32"), on_device(torch.device("cpu"), "fp32"):
        assert entered == [torch.device("cuda", 1)]
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_second_gpu_gives_what_the_first_gives(small_model, rng):
    image = rng.random((100, 90), dtype=np.float32)
    results = [Segmenter(small_model, backend="torch", device=f"cuda:{i}").sample(image, n=2, steps=3, seed=5)
               for i in (1, 0)]  # cuda:1 while cuda:0 is the current device
    assert torch.cuda.current_device() == 0
    np.testing.assert_array_equal(results[0].latents, results[1].latents)


def test_threads_take_turns_on_a_captured_graph(monkeypatch):
    """Threads sharing one captured loop each get the output of their own inputs. A stand-in
    graph (no GPU here) whose replay, like a real one queued on the stream, reads the static
    inputs a moment later: without the loop's lock another thread's copy-in lands in between."""
    loop = DeviceLoop(torch.nn.Identity(), torch.device("cpu"), "fp32", cuda_graphs=False)
    loop.cuda_graphs = True

    class Graph:
        def __init__(self, inputs, output):
            self.inputs, self.output = inputs, output

        def replay(self):
            time.sleep(0.001)
            self.output.copy_(2 * self.inputs[0])

    def capture(condition, seeds, samples, plan):
        inputs = (condition.clone(), seeds.clone(), samples.clone())
        output = torch.empty_like(condition)
        return Graph(inputs, output), inputs, output

    monkeypatch.setattr(loop, "_capture", capture)
    plan = sampling_plan(get_config("small"), 3, 1.0)
    wrong = []

    def run(value):
        z_i = np.full((1, *plan.latent_shape), value, np.float32)
        for _ in range(10):
            wrong.append(not np.array_equal(loop(z_i, [value], 2, plan), np.repeat(2 * z_i, 2, axis=0)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wrong) == 40 and not any(wrong)


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
