"""Backends run the three inference networks; the Segmenter drives them.

Every backend has the same face (base.Backend), on float32 numpy arrays (NCHW):
    encode(images) -> z_i        denoise(z_t, z_i, t) -> model output        decode(z) -> probs
and says what it is: `name`, `precision`, `device`, `config`.

What each runs: torch, any model (a bundle's weights, a checkpoint, a model in memory);
onnxruntime, openvino and tensorrt, a bundle's ONNX graphs. "auto" picks tensorrt when a CUDA
GPU and TensorRT are present and the engine is a bundle, else torch on the GPU; on a CPU, an
LDSeg bundle runs on openvino where it is installed (faster than onnxruntime there, same samples:
section speed/end_to_end of benchmarks/RESULTS.md), a pixel-space one (and LDSeg's without openvino) on onnxruntime, and
anything else on torch (it has no graphs to run).

precision="auto" is the backend's first precision, except that openvino runs a bundle in bf16 where
the CPU multiplies bf16 (AVX-512 bf16 or AMX) and the bundle records, from its export, that a bf16
run's consensus agreed with fp32's on at least BF16_MIN_AGREEMENT of the pixels; a bundle that
records nothing runs in fp32. Ask for "fp32" to get fp32 whatever the machine.
"""
from __future__ import annotations

import importlib.util

import torch

from ..bundle import Bundle
from ..errors import BackendError, DeviceError
from .precision import cpu_has_bf16

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16"),
              "tensorrt": ("fp16", "fp32")}  # first: auto
NEEDS_BUNDLE = ("onnxruntime", "openvino", "tensorrt")
BF16_MIN_AGREEMENT = 0.999  # of the consensus' pixels, for precision="auto" to choose bf16


def resolve_device(device) -> torch.device:
    """'auto' is CUDA when present, else the CPU; asking for a missing GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was requested but no CUDA GPU is available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) present")
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device type {resolved.type!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def tensorrt_available() -> bool:
    """Whether TensorRT really imports, in a version this package builds with (a broken install
    must not make "auto" choose it)."""
    from .tensorrt_engines import tensorrt_usable  # imports tensorrt: only asked for with a GPU
    return tensorrt_usable()


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(source, device: torch.device) -> str:
    """The backend "auto" means for this engine on this device."""
    if device.type == "cuda":
        return "tensorrt" if isinstance(source, Bundle) and tensorrt_available() else "torch"
    if not isinstance(source, Bundle):
        return "torch"
    # OpenVINO ran LDSeg's networks faster than onnxruntime but the pixel-space U-Net slower
    # (sections speed/end_to_end and speed/denoiser_batch of benchmarks/RESULTS.md).
    if source.manifest["family"] == "ambiguous" or not openvino_available():
        return "onnxruntime"
    return "openvino"


def recorded_bf16_agreement(bundle: Bundle) -> float | None:
    """The consensus agreement of bf16 with fp32 the bundle's export measured (None: not measured)."""
    return bundle.manifest.get("precision", {}).get("bf16", {}).get("agreement")


def choose_precision(name: str, source, device: torch.device) -> str:
    """The precision "auto" means for this backend, engine and device."""
    if name == "openvino" and device.type == "cpu" and isinstance(source, Bundle) and cpu_has_bf16():
        agreement = recorded_bf16_agreement(source)
        if agreement is not None and agreement >= BF16_MIN_AGREEMENT:
            return "bf16"
    return PRECISIONS[name][0]


def create_backend(name: str, source, device="auto", precision: str = "auto", **options):
    """Build the named backend for `source`, a model of either family or a loaded Bundle. options go to
    the backend (torch: kernels, cuda_graphs)."""
    if name not in BACKENDS + ("auto",):
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(('auto',) + BACKENDS)}")
    device = resolve_device(device)
    name = choose_backend(source, device) if name == "auto" else name
    if precision == "auto":
        precision = choose_precision(name, source, device)
    if precision not in PRECISIONS[name]:
        raise BackendError(f"precision {precision!r} is not available with backend {name!r}; "
                           f"available: {', '.join(('auto',) + PRECISIONS[name])}")
    if options and name != "torch":
        raise BackendError(f"options {sorted(options)} apply to backend 'torch' only, not {name!r}")
    if name in NEEDS_BUNDLE and not isinstance(source, Bundle):
        raise BackendError(f"backend {name!r} runs an exported bundle's graphs; export the model first "
                           "(python -m ldseg_rt.export CKPT --out NAME.ldseg) and pass the bundle's path")
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(source, device)
    if name == "openvino":
        from .openvino_backend import OpenVinoBackend
        return OpenVinoBackend(source, device, precision)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend(source, device, precision)
    from ..models.checkpoint import load_model
    from .torch_backend import TorchBackend
    return TorchBackend(load_model(source), device, precision, **options)
