"""Reduced-precision copies of a model for the torch backend: fp16/bf16 weights with the
norms and the time embedding kept in fp32, run under torch.autocast, which feeds each layer
in the dtype it wants (norms in fp32, matmuls and convolutions in fp16/bf16). On a GPU both
work; on a CPU, bf16 only where the hardware multiplies bf16 (AVX-512 bf16 or AMX): without
it oneDNN declines and PyTorch falls back to a reference convolution about 100x slower than
fp32 (glas512 decoder, one image: 66 s against 0.7 s on an AVX2 CPU)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import BackendError
from ..models.layers import TimeEmbedding

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_MODULES = (nn.GroupNorm, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, TimeEmbedding)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (what oneDNN needs for bf16 convolutions)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_precision(precision: str, device: torch.device) -> None:
    """A clear error for a precision this device cannot run (fp32 runs everywhere)."""
    if precision not in DTYPES:
        raise BackendError(f"unknown precision {precision!r}; expected one of {sorted(DTYPES)}")
    if device.type == "cuda" or precision == "fp32":
        return
    if precision == "fp16":
        raise BackendError("precision 'fp16' with backend 'torch' needs a CUDA device; on the CPU use 'fp32' "
                           "(or 'bf16' on a CPU with AVX-512 bf16)")
    if not cpu_has_bf16():
        raise BackendError("precision 'bf16' on the CPU needs AVX-512 bf16 or AMX, which this CPU lacks "
                           f"({torch.backends.cpu.get_cpu_capability()}); bf16 convolutions would run ~100x "
                           "slower than fp32 here: use 'fp32'")


def cast_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """A copy of `model` on `device` with its weights in `precision`, norms in fp32 (the
    caller's model is never changed)."""
    model = copy.deepcopy(model).to(device).eval()
    for module in model.modules():
        if not isinstance(module, FP32_MODULES):  # their weights and buffers stay fp32
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(DTYPES[precision])
    return model


def to_channels_last(model: nn.Module, everything: bool) -> None:
    """Convolution weights channels_last, in place, so oneDNN runs the convolutions in that
    layout. Eager fp32, glas512, one thread: image encoder 1.08x and decoder 1.27x faster;
    the denoiser's small maps 0.93x, so fp32 keeps it NCHW (`everything` for bf16, where
    oneDNN wants channels_last throughout). Volumes' networks: channels_last_3d."""
    layout = torch.channels_last if model.config.spatial_dims == 2 else torch.channels_last_3d
    for name in ("image_encoder", "denoiser", "decoder"):
        if everything or name != "denoiser":
            getattr(model, name).to(memory_format=layout)


def autocast(device: torch.device, precision: str):
    """The context a cast model runs under: autocast to the precision, or nothing for fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32", cache_enabled=False)
