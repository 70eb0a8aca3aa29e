"""Each fused kernel's plain torch path (the `*_reference` functions of ldseg_rt.kernels) at
shapes LDSeg and the ambiguous family run, and the Triton kernels at the same shapes on CUDA
(skipped without a GPU; the CPU interpreter is for correctness, not speed). A pytest-benchmark
suite; options go to pytest, and --no-write leaves benchmarks/RESULTS.md as it is.

    python benchmarks/speed/kernel_calls.py [pytest options]

Shapes: attention (batch, heads, tokens, head dim) 1x8x4096x8 is glas512's image encoder
at 64x64 (8 heads of 8 channels), 16x8x64x8 the denoiser's 8x8 level at n = 16; GroupNorm
(+SiLU) on glas512's encoder stem output 1x32x256x256 (4 groups) and the denoiser's
16x64x16x16 (4 groups); the diffusion step on 16 glas512 latents 1x32x32 (eta 0 and 1, the
latter drawing Philox noise); aggregation of 16 samples' probabilities, 2 classes at
512x512 (glas512) and 3 at 128x128 (small).
"""
import sys

import pytest
import torch

from ldseg_rt.bench.script import run_suite
from ldseg_rt.diffusion.tables import ldseg_table
from ldseg_rt.kernels import aggregate, attention, diffusion_step, groupnorm

CUDA = torch.cuda.is_available()
PATHS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not CUDA, reason="Triton kernels need CUDA"))]


def _device(path):
    return torch.device("cuda" if path == "triton" else "cpu")


def _run(benchmark, fn, *args, device, **kwargs):
    def call():
        out = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    call()  # compile / warm up
    benchmark(call)


@pytest.mark.parametrize("shape", [(1, 8, 4096, 8), (16, 8, 64, 8)], ids=["glas512-encoder", "denoiser-n16"])
@pytest.mark.parametrize("path", PATHS)
def test_attention(benchmark, path, shape):
    device = _device(path)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen).to(device) for _ in range(3))
    fn = attention.attention if path == "triton" else attention.attention_reference
    _run(benchmark, fn, q, k, v, device=device)


@pytest.mark.parametrize("shape", [(1, 32, 256, 256), (16, 64, 16, 16)], ids=["glas512-encoder", "denoiser-n16"])
@pytest.mark.parametrize("path", PATHS)
def test_groupnorm_silu(benchmark, path, shape):
    device = _device(path)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device)
    weight, bias = (torch.randn(shape[1], generator=gen).to(device) for _ in range(2))
    if path == "triton":
        _run(benchmark, groupnorm.group_norm, x, 4, weight, bias, 1e-3, silu=True, device=device)
    else:
        _run(benchmark, groupnorm.group_norm_reference, x, 4, weight, bias, 1e-3, silu=True, device=device)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("path", PATHS)
def test_diffusion_step(benchmark, path, eta):
    device = _device(path)
    gen = torch.Generator().manual_seed(0)
    z, out = (torch.randn(16, 1, 32, 32, generator=gen).to(device) for _ in range(2))
    row = ldseg_table(15, eta)[1]  # a step with noise when eta > 0
    seeds = torch.zeros(16, dtype=torch.int64, device=device)  # as the device loop passes them
    samples = torch.arange(16, dtype=torch.int64, device=device)
    fn = diffusion_step.diffusion_step if path == "triton" else diffusion_step.diffusion_step_reference
    _run(benchmark, fn, z, out, seeds, samples, 1, row, "eps", 0.0, True, device=device)


@pytest.mark.parametrize("shape", [(16, 2, 512, 512), (16, 3, 128, 128)], ids=["glas512", "small"])
@pytest.mark.parametrize("path", PATHS)
def test_aggregate(benchmark, path, shape):
    device = _device(path)
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(shape, generator=gen), dim=1).to(device)
    fn = aggregate.aggregate if path == "triton" else aggregate.aggregate_reference
    _run(benchmark, fn, probs, device=device)


if __name__ == "__main__":
    sys.exit(run_suite(__file__))
