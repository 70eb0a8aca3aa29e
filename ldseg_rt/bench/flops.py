"""FLOP counting: each inference network's inputs at the batch sample() calls it with, the
FLOPs of one call of each counted by torch's FlopCounterMode on the meta device (shapes
only, the CPU as fallback), and the total of one sample() call (encoder once, denoiser
`steps` times, decoder once)."""
from __future__ import annotations

import copy

import torch


def _flop_counter() -> "torch.utils.flop_counter.FlopCounterMode":
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

    # The CPU's fused attention op is missing from torch's table; count it like the others.
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: sdpa_flop} if cpu_attention else None)


def network_inputs(cfg, n: int, device="cpu") -> dict[str, tuple[torch.Tensor, ...]]:
    """Each inference network's inputs at the batch sample() calls it with for one image."""
    t = 0.5 * (cfg.timesteps if cfg.family == "ldseg" else 1.0)
    return {"image_encoder": (torch.rand(1, cfg.in_channels, *cfg.image_shape, device=device),),
            "denoiser": (torch.randn(n, *cfg.latent_shape, device=device),
                         torch.randn(n, *cfg.condition_shape, device=device), torch.full((n,), t, device=device)),
            "decoder": (torch.randn(n, *cfg.latent_shape, device=device),)}


def network_flops(model, n: int) -> dict[str, int]:
    """FLOPs of one call of each inference network at the batch it runs at for one image and
    n samples, counted by FlopCounterMode on the meta device (falling back to the CPU)."""
    counts = {}
    for device in ("meta", "cpu"):
        try:
            for name, inputs in network_inputs(model.config, n, device).items():
                network = getattr(model, name) if device == "cpu" else copy.deepcopy(getattr(model, name)).to(device)
                counter = _flop_counter()
                with torch.inference_mode(), counter:
                    network(*inputs)
                counts[name] = int(counter.get_total_flops())
            return counts
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel
            if device == "cpu":
                raise
    return counts


def flops_per_call(model, n: int, steps: int) -> int:
    """FLOPs of one sample() call: encoder at batch 1, `steps` denoiser calls at batch n,
    the decoder at batch n."""
    f = network_flops(model, n)
    return f["image_encoder"] + steps * f["denoiser"] + f["decoder"]
