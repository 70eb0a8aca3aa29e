"""The memory the math of one sample() call needs: the largest set of tensors one layer must
hold at once (its inputs and its output), over every module of the three inference
networks at the batch sample() runs each at (encoder: one image; denoiser: n; decoder: the
backend's decode batch). Counted on the meta device: shapes only, nothing is computed."""
from __future__ import annotations

import copy

import torch

from .flops import network_inputs


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def largest_activation_bytes(model, n: int, decode_batch: int | None = None) -> tuple[int, str]:
    """(bytes, 'network.module') of the module whose inputs + output are largest."""
    batches = {"image_encoder": 1, "denoiser": n, "decoder": min(n, decode_batch or n)}
    best = (0, "")
    for name, batch in batches.items():
        network = copy.deepcopy(getattr(model, name)).to("meta").eval()
        inputs = network_inputs(model.config, batch, "meta")[name]
        sizes = []
        hooks = [module.register_forward_hook(
            lambda module, args, out, where=f"{name}.{path}".rstrip("."): sizes.append((_nbytes(args) + _nbytes(out), where)))
            for path, module in network.named_modules()]
        with torch.inference_mode():
            network(*inputs)
        for hook in hooks:
            hook.remove()
        best = max(best, *sizes)
    return best
