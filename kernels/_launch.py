"""Where a Triton kernel can run: on a CUDA tensor, or anywhere under the interpreter
(TRITON_INTERPRET=1, read by triton when a kernel is defined, so set it before importing);
and the checks of the integer arguments the Philox kernels take."""
from __future__ import annotations

import operator
import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_launch(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels can take these tensors: all on one CUDA device, or all on
    the CPU under the interpreter."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return False
    device = devices.pop()
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def check_int(value, name: str, bits: int = 32) -> int:
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = operator.index(value)
    if not 0 <= value < 2**bits:
        raise ValueError(f"{name} must be in [0, 2^{bits}), got {value}")
    return value


def uint_words(values, name: str, bits: int, device, rows: int | None = None) -> torch.Tensor:
    """An int64 tensor (rows,) of unsigned `bits`-bit words, from a tensor (uint64 read through
    its bit pattern; values are not inspected, so this is safe inside CUDA graph capture) or
    from range-checked ints."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.uint64:
            values = values.view(torch.int64)
        if values.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 tensor (the uint{bits} bit pattern) or ints, "
                            f"got dtype {values.dtype}")
        words = values.to(torch.int64).contiguous()
    else:
        if not hasattr(values, "__len__"):
            raise TypeError(f"{name} must be a sequence of ints or an int64 tensor, got {type(values).__name__}")
        # Python ints >= 2^63 become their int64 bit pattern.
        words = torch.tensor([(w + 2**63) % 2**64 - 2**63 for w in (check_int(v, name, bits) for v in values)],
                             dtype=torch.int64, device=device)
    if words.ndim != 1 or len(words) == 0 or rows is not None and len(words) != rows:
        want = "be a non-empty 1-D sequence" if rows is None else f"have shape ({rows},)"
        raise ValueError(f"{name} must {want}, got shape {tuple(words.shape)}")
    return words


def require_launch(*tensors: torch.Tensor) -> None:
    if not can_launch(*tensors):
        devices = ", ".join(sorted({str(t.device) for t in tensors}))
        raise RuntimeError(f"the Triton kernels need all tensors on one CUDA device, or on the CPU under "
                           f"TRITON_INTERPRET=1; got {devices}")


def default_device(seeds, device):
    if device is not None:
        return torch.device(device)
    return seeds.device if isinstance(seeds, torch.Tensor) else torch.device("cpu")
