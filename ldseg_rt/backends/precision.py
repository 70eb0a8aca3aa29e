"""Reduced-precision copies of a model for the torch backend: fp16/bf16 weights with the
norms, the time embedding and LDSeg's class head (the 1x1 convolution to the classes, its norm
and the softmax) kept in fp32, run under torch.autocast, which feeds each layer
in the dtype it wants (norms in fp32, matmuls and convolutions in fp16/bf16). On a GPU both
work; on a CPU, bf16 only where the hardware multiplies bf16 (AVX-512 bf16 or AMX): without
it oneDNN declines and PyTorch falls back to a reference convolution orders of magnitude slower
than fp32 (benchmarks/RESULTS.md, "CPU speed").

On CUDA, fp32 means IEEE fp32: cuDNN convolutions (and cuBLAS matmuls, if the caller allowed
it) would otherwise run in TF32, ~1e-3 relative instead of ~1e-6."""
from __future__ import annotations

import contextlib
import copy
import threading

import torch
from torch import nn

from ..errors import BackendError
from ..models.label_networks import LabelDecoding
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


class InFp32(nn.Module):
    """A layer run in fp32 whatever the autocast around it: LDSeg's class logits in bf16 (8
    significant bits) turn most near-equal class probabilities into exact ties, which argmax
    sends to class 0 (random glas512 weights: 81% of pixels tied, 59% of consensus pixels
    agreeing with fp32; the `small` configuration 42% and 78%)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


def cast_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """A copy of `model` on `device` with its weights in `precision`, norms and the class head
    in fp32 (the caller's model is never changed)."""
    model = copy.deepcopy(model).to(device).eval()
    if precision != "fp32":
        for decoding in [m for m in model.modules() if isinstance(m, LabelDecoding)]:
            decoding.to_classes = InFp32(decoding.to_classes)
    kept = {id(inner) for head in model.modules() if isinstance(head, InFp32) for inner in head.modules()}
    for module in model.modules():
        if not isinstance(module, FP32_MODULES) and id(module) not in kept:  # their weights and buffers stay fp32
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(DTYPES[precision])
    return model


def to_channels_last(model: nn.Module, everything: bool) -> None:
    """Convolution weights channels_last, in place, so oneDNN runs the convolutions in that
    layout: faster for the image encoder and the decoder in eager fp32, slower for the
    denoiser's small maps (benchmarks/RESULTS.md, "CPU speed"), so fp32 keeps it NCHW (`everything` for bf16, where
    oneDNN wants channels_last throughout). Volumes' networks: channels_last_3d."""
    layout = torch.channels_last if model.config.spatial_dims == 2 else torch.channels_last_3d
    for name in ("image_encoder", "denoiser", "decoder"):
        if everything or name != "denoiser":
            getattr(model, name).to(memory_format=layout)


def autocast(device: torch.device, precision: str):
    """The context a cast model runs under: autocast to the precision, or nothing for fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32", cache_enabled=False)


class _ExactFp32:
    """While any fp32 CUDA run is in flight, cuDNN convolutions and cuBLAS matmuls in IEEE fp32.

    The switches (torch.backends.{cudnn.conv,cuda.matmul}.fp32_precision) are process-global
    and torch offers no per-thread or per-call form, so runs count themselves in and out under
    a lock: the first in saves the caller's settings, the last out restores them. Save/restore
    per run would not do: two overlapping runs would restore each other's TF32 mid-run, or
    leave it off for good. Other threads' fp32 CUDA work in that window runs in IEEE fp32 too.
    The fp32_precision flags, not the legacy allow_tf32 ones: reading those raises once a
    caller has set the new ones."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs = 0
        self._saved: tuple[str, str] | None = None

    @contextlib.contextmanager
    def __call__(self):
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        with self._lock:
            if self._runs == 0:
                self._saved = (conv.fp32_precision, matmul.fp32_precision)
                conv.fp32_precision = matmul.fp32_precision = "ieee"
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    conv.fp32_precision, matmul.fp32_precision = self._saved


exact_fp32 = _ExactFp32()


@contextlib.contextmanager
def on_device(device: torch.device, precision: str):
    """On CUDA: `device` as the current device, since Triton launches on the current device
    whatever its tensors' device (cuda:1 would otherwise run on GPU 0 against GPU 1's memory),
    and IEEE fp32 for fp32. Nothing elsewhere."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), exact_fp32() if precision == "fp32" else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def run_context(device: torch.device, precision: str):
    """Everything a cast model runs under: on_device, then autocast to the precision."""
    with on_device(device, precision), autocast(device, precision):
        yield
