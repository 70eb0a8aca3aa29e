"""The two plain-PyTorch pipelines the Segmenter is measured against, fp32 with the same
weights and the C++ sampler's Philox noise: `eager_per_sample` (the whole pipeline once per
sample, as the original code does) and `eager_batched` (the encoder once, the n samples as
one batch), with their shared pieces: the step loop (the library's float64 oracle, with the
denoiser in PyTorch) and the final aggregation."""
from __future__ import annotations

import numpy as np
import torch

from ..diffusion.oracle import reference_sample
from ..diffusion.plan import SamplingPlan


def _loop(model, condition: torch.Tensor, seed: int, first_sample: int, n: int, plan: SamplingPlan) -> torch.Tensor:
    """Samples first_sample .. first_sample + n - 1 as one batch through the library's float64
    oracle loop, the denoiser in PyTorch; float32 final latents."""
    device = condition.device

    def denoise(z: np.ndarray, t: np.ndarray) -> np.ndarray:
        return model.denoiser(torch.from_numpy(z).to(device), condition, torch.from_numpy(t).to(device)).cpu().numpy()

    z = reference_sample(denoise, [seed], n, plan.latent_shape, plan.table, plan.prediction, plan.clip,
                         plan.renormalize, first_sample)
    return torch.from_numpy(z).float().to(device)


def _finish(probs: torch.Tensor, size) -> tuple[np.ndarray, np.ndarray]:
    from ..pipeline.aggregate import aggregate, resize_probs
    samples, mean, mask, uncertainty = aggregate(resize_probs(probs.float(), size))
    return samples.cpu().numpy(), mask.cpu().numpy()


def eager_per_sample(model, img, n: int, seed: int, plan: SamplingPlan, device="cpu"):
    """What the original code does: the whole pipeline once per sample, in plain PyTorch
    (encoder, the K-step loop at batch 1, decoder), n times; then the n maps aggregated.
    Returns (class maps (n, H, W) uint8, consensus (H, W) uint8, latents (n, ...))."""
    from ..pipeline.preprocess import prepare
    p = prepare(img, model.config)
    probs, latents = [], []
    with torch.inference_mode():
        pixels = torch.from_numpy(p.pixels)[None].to(device)
        for k in range(n):
            z_i = model.image_encoder(pixels)
            z = _loop(model, z_i, seed, k, 1, plan)
            latents.append(z)
            probs.append(model.decoder(z))
        samples, mask = _finish(torch.cat(probs), p.size)
    return samples, mask, torch.cat(latents).cpu().numpy()


def eager_batched(model, img, n: int, seed: int, plan: SamplingPlan, device="cpu"):
    """Plain PyTorch, batched: the encoder once, the n samples as one batch through the loop
    and the decoder. Same returns as eager_per_sample."""
    from ..pipeline.preprocess import prepare
    p = prepare(img, model.config)
    with torch.inference_mode():
        z_i = model.image_encoder(torch.from_numpy(p.pixels)[None].to(device))
        condition = z_i.expand(n, *z_i.shape[1:]).contiguous()
        z = _loop(model, condition, seed, 0, n, plan)
        samples, mask = _finish(model.decoder(z), p.size)
    return samples, mask, z.cpu().numpy()
