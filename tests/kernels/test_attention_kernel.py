"""The Triton attention kernel (and its torch reference) against float64 torch.

Fresh random inputs every run (the rng fixture prints its seed). Error is max abs error over
max abs reference. Tolerances, with the worst seen over repeated runs under the interpreter:
fp32 1e-5 (IEEE fp32 dots: ~1e-6, up to 5e-6 with logits of +/-60, whose fp32 rounding the
exponential amplifies); fp16 5e-3 (rounding the output costs up to 2**-11 ~ 5e-4 of a value:
up to 5.3e-4 seen); bf16 2e-2, since bf16 keeps 8 significant bits: rounding the output costs
up to 2**-8 ~ 4e-3 of a value on a GPU and 2**-7 ~ 8e-3 under the interpreter, whose
fp32 -> bf16 cast truncates, before the rounding of the softmax weights that feed the second
matmul (up to 9.7e-3 seen, interpreted).
Under the interpreter on one CPU thread the file takes about a minute; the LDSeg case
(8 heads x 4096 tokens x dim 8) is half of it.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton

import ldseg_rt.kernels.attention as attention_module
from ldseg_rt.kernels.attention import attention, attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
DTYPES = list(TOLERANCE)

# (batch, heads, query tokens T, key tokens S, head dim D): every T in {1, 2, 7, 33, 100,
# 257, 1000}, every D in {8, 16, 24, 64, 128}, H in {1, 3, 8}, S both equal to T and not,
# so query and key tails that fill no whole block, and keys over several blocks.
SHAPES = [
    (1, 1, 1, 1, 8),
    (2, 1, 2, 2, 16),
    (1, 3, 7, 7, 24),
    (1, 8, 33, 33, 64),
    (2, 3, 100, 100, 128),
    (1, 1, 257, 257, 8),
    (1, 3, 1000, 1000, 16),
    (1, 1, 1, 1000, 64),
    (2, 3, 257, 7, 8),
    (1, 8, 33, 1000, 24),
    (1, 1, 1000, 33, 128),
    (3, 1, 100, 257, 16),
    (1, 3, 2, 100, 8),
]


def randn(rng: np.random.Generator, *shape: int, dtype: torch.dtype = torch.float32,
          std: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(std * rng.standard_normal(shape)).to(device=DEVICE, dtype=dtype)


def qkv(rng, b, h, t, s, d, dtype=torch.float32, std=1.0):
    return randn(rng, b, h, t, d, dtype=dtype, std=std), *(randn(rng, b, h, s, d, dtype=dtype, std=std)
                                                           for _ in range(2))


def reference64(q, k, v, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1) @ v.double()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def check(out, q, k, v, scale=None):
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    err = relative_error(out, reference64(q, k, v, scale))
    print(f"{q.dtype} {tuple(q.shape)} x {k.shape[2]} keys: relative error {err:.2e}")
    assert err <= TOLERANCE[q.dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64(rng, shape, dtype):
    q, k, v = qkv(rng, *shape, dtype=dtype)
    check(attention(q, k, v), q, k, v)


def test_ldseg_image_encoder_case(rng):
    """LDSeg's image encoder: 8 heads of dim 8 over a 64 x 64 map, 4096 tokens."""
    q, k, v = qkv(rng, 1, 8, 4096, 4096, 8)
    check(attention(q, k, v), q, k, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_ldseg_length_half_precision(rng, dtype):
    q, k, v = qkv(rng, 1, 1, 4096, 4096, 8, dtype=dtype)
    check(attention(q, k, v), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_logits_are_stable(rng, dtype):
    """Scores with a standard deviation of 15 reach about +/-60: exp of them overflows fp16
    and, unshifted, loses fp32's precision; the running max keeps every exponent <= 0."""
    q, k, v = qkv(rng, 1, 3, 300, 1000, 16, dtype=dtype, std=15 ** 0.5)
    scores = (q.double() @ k.double().transpose(-1, -2)) * 16 ** -0.5
    assert scores.abs().max() > 50
    out = attention(q, k, v)
    assert torch.isfinite(out).all()
    check(out, q, k, v)


@pytest.mark.parametrize("rising", [True, False], ids=["rising", "falling"])
def test_running_max_rescales_earlier_blocks(rng, rising):
    """Key norms grow (or shrink) along the sequence, so the row max moves from block to
    block (or is found in the first): what was summed under an older max must be rescaled."""
    q, k, v = qkv(rng, 2, 1, 50, 1000, 8)
    growth = torch.linspace(0.2, 4.0, 1000, dtype=torch.float64, device=DEVICE)
    k = k * (growth if rising else growth.flip(0)).to(k.dtype)[:, None]
    check(attention(q, k, v), q, k, v)


def test_explicit_scale(rng):
    q, k, v = qkv(rng, 1, 3, 33, 100, 24)
    check(attention(q, k, v, scale=0.7), q, k, v, scale=0.7)


def test_strided_inputs(rng):
    """The model's heads are views of (B, T, H, D) activations: strides, not copies; an
    expanded k (stride 0 over heads) and a v with a non-unit last stride work too."""
    q = randn(rng, 2, 100, 3, 16).transpose(1, 2)
    k = randn(rng, 2, 1, 70, 16).expand(2, 3, 70, 16)
    v = randn(rng, 2, 3, 70, 32)[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    check(attention(q, k, v), q, k, v)


@pytest.mark.parametrize("shape", [(1, 2, 300, 200, 8), (1, 1, 130, 70, 128)], ids=["d8", "d128"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gpu_block_sizes(rng, monkeypatch, shape, dtype):
    """The interpreter runs with larger blocks than a GPU (its cost is per loop step); the
    GPU's blocks, many per row with tails, must give the same answer."""
    monkeypatch.setattr(attention_module, "interpreting", lambda: False)
    q, k, v = qkv(rng, *shape, dtype=dtype)
    check(attention(q, k, v), q, k, v)


def ptxas_spills(dtype: torch.dtype, head_dim: int, folder: Path) -> tuple[int, int]:
    """Spill stores and loads (bytes per thread, from ptxas -v) of the kernel at its GPU config,
    compiled ahead of time for sm_90a: no GPU needed, only triton's bundled ptxas. Not under
    TRITON_INTERPRET=1, where triton.language itself is built for the interpreter."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
    block_m, block_n, block_d, num_warps = attention_module._config(head_dim, dtype, interpreted=False)
    kernel = attention_module._attention_kernel
    pointer = "*" + {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    signature = {p.name: "constexpr" if p.is_constexpr else pointer if p.name.endswith("_ptr")
                 else "fp32" if p.name == "qk_scale" else "i32" for p in kernel.params}
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d,
                 "DOT_TYPE": attention_module._TL_DTYPES[dtype]}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": 2})
    ptx = folder / "attention.ptx"
    ptx.write_text(compiled.asm["ptx"])
    log = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
                         capture_output=True, text=True, check=True).stderr
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
    return int(stores), int(loads)


AOT_CASES = [(torch.float32, 32), (torch.bfloat16, 64)]


def test_gpu_configs_do_not_spill(tmp_path):
    """The tiles where the former choice spilled most (fp32 D 32: 17.0 KB per thread; fp16/bf16
    D 64), compiled for sm_90a in a process without the interpreter: no register spills. ~4 s;
    the other head dims were measured once (see attention._config), and benchmarks/gpu_check.py
    reads every config's spills on a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True)
    if run.returncode == 3:
        pytest.skip(f"this triton cannot compile ahead of time for CUDA: {run.stdout.strip()}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout) == [[0, 0]] * len(AOT_CASES)


@pytest.mark.parametrize("empty", [(0, 8, 4096, 4096, 8), (2, 3, 0, 5, 16)], ids=["batch", "tokens"])
def test_empty_inputs(empty):
    b, h, t, s, d = empty
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for n in (t, s, s))
    out = attention(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype


@pytest.mark.parametrize("shape", [(2, 3, 33, 100, 24), (1, 8, 257, 257, 8)])
def test_reference_matches_float64_and_sdpa(rng, shape):
    q, k, v = (t.cpu() for t in qkv(rng, *shape))
    ref = attention_reference(q, k, v)
    assert ref.dtype == torch.float32
    assert relative_error(ref, reference64(q, k, v)) <= 1e-5
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    assert relative_error(attention_reference(q, k, v, scale=0.5), sdpa.double()) <= 1e-5
    assert attention_reference(q.half(), k.half(), v.half()).dtype == torch.float16


def test_shape_errors():
    q = torch.zeros(1, 2, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="must be 4-D"):
        attention(q[0], q, q)
    with pytest.raises(ValueError, match="same batch size"):
        attention(q, *[torch.zeros(2, 2, 5, 8, device=DEVICE)] * 2)
    with pytest.raises(ValueError, match="same number of heads"):
        attention(q, *[torch.zeros(1, 3, 5, 8, device=DEVICE)] * 2)
    with pytest.raises(ValueError, match="same head dim"):
        attention(q, *[torch.zeros(1, 2, 5, 16, device=DEVICE)] * 2)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        attention(q, q, torch.zeros(1, 2, 6, 8, device=DEVICE))
    with pytest.raises(ValueError, match="head dim must be 1 to 128"):
        attention(*[torch.zeros(1, 1, 4, 256, device=DEVICE)] * 3)
    with pytest.raises(ValueError, match="no tokens"):
        attention(q, *[torch.zeros(1, 2, 0, 8, device=DEVICE)] * 2)
    with pytest.raises(ValueError, match="scale must be finite"):
        attention(q, q, q, scale=float("nan"))
    with pytest.raises(ValueError, match="must be 4-D"):
        attention_reference(q, q, q[0])


def test_type_errors():
    q = torch.zeros(1, 2, 5, 8, device=DEVICE)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        attention(q, q.cpu().numpy(), q)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16, got torch.float64"):
        attention(*[q.double()] * 3)
    with pytest.raises(TypeError, match="share one dtype"):
        attention(q, q.half(), q)


def test_device_errors():
    q = torch.zeros(1, 2, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="on one device"):
        attention(q, q.to("meta"), q)
    # A meta tensor is neither CUDA nor interpretable, like a CPU tensor without TRITON_INTERPRET.
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        attention(*[q.to("meta")] * 3)


if __name__ == "__main__":  # test_gpu_configs_do_not_spill's compiler process
    try:
        results = [ptxas_spills(dtype, head_dim, Path(sys.argv[1])) for dtype, head_dim in AOT_CASES]
    except (ImportError, FileNotFoundError) as error:
        print(error)
        sys.exit(3)
    print(json.dumps(results))
