"""The two plain-PyTorch pipelines the Segmenter is measured against, fp32 with the same
weights and the C++ sampler's Philox noise: `eager_per_sample` (the whole pipeline once per
sample, as the original code does) and `eager_batched` (the encoder once, the n samples as
one batch), with their shared pieces: noise, the step loop (its step math is the float64 oracle's) and
the final aggregation."""
from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ..diffusion import reference_step, renormalize
from ..sampling_plan import SamplingPlan


def _noise(seed: int, samples, step: int, stream: int, shape) -> np.ndarray:
    """The C++ sampler's Philox normals (float64) for the given sample indices."""
    numel = int(np.prod(shape))
    return np.stack([_C.normal(seed, k, step, stream, numel) for k in samples]).reshape(len(samples), *shape)


def _loop(model, condition: torch.Tensor, seed: int, samples, plan: SamplingPlan) -> torch.Tensor:
    """The plan's steps for the given sample indices as one batch, the step math in float64
    by the library's oracle step; float32 final latents."""
    device = condition.device
    z = _noise(seed, samples, 0, _C.STREAM_INIT, plan.latent_shape)
    if plan.renormalize:
        z = renormalize(z)
    for i, row in enumerate(plan.table):
        t = torch.full((len(z),), float(np.float32(row[0])), dtype=torch.float32, device=device)
        out = model.denoiser(torch.from_numpy(z).float().to(device), condition, t).double().cpu().numpy()
        noise = _noise(seed, samples, i, _C.STREAM_STEP, plan.latent_shape) if row[6] != 0 else None
        z = reference_step(z, out, row, plan.prediction, plan.clip, noise)
        if plan.renormalize:
            z = renormalize(z)
    return torch.from_numpy(z).float().to(device)


def _finish(probs: torch.Tensor, size) -> tuple[np.ndarray, np.ndarray]:
    from ..aggregate import aggregate, resize_probs
    samples, mean, mask, uncertainty = aggregate(resize_probs(probs.float(), size))
    return samples.cpu().numpy(), mask.cpu().numpy()


def eager_per_sample(model, img, n: int, seed: int, plan: SamplingPlan, device="cpu"):
    """What the original code does: the whole pipeline once per sample, in plain PyTorch
    (encoder, the K-step loop at batch 1, decoder), n times; then the n maps aggregated.
    Returns (class maps (n, H, W) uint8, consensus (H, W) uint8, latents (n, ...))."""
    from ..preprocess import prepare
    p = prepare(img, model.config)
    probs, latents = [], []
    with torch.inference_mode():
        pixels = torch.from_numpy(p.pixels)[None].to(device)
        for k in range(n):
            z_i = model.image_encoder(pixels)
            z = _loop(model, z_i, seed, [k], plan)
            latents.append(z)
            probs.append(model.decoder(z))
        samples, mask = _finish(torch.cat(probs), p.size)
    return samples, mask, torch.cat(latents).cpu().numpy()


def eager_batched(model, img, n: int, seed: int, plan: SamplingPlan, device="cpu"):
    """Plain PyTorch, batched: the encoder once, the n samples as one batch through the loop
    and the decoder. Same returns as eager_per_sample."""
    from ..preprocess import prepare
    p = prepare(img, model.config)
    with torch.inference_mode():
        z_i = model.image_encoder(torch.from_numpy(p.pixels)[None].to(device))
        condition = z_i.expand(n, *z_i.shape[1:]).contiguous()
        z = _loop(model, condition, seed, range(n), plan)
        samples, mask = _finish(model.decoder(z), p.size)
    return samples, mask, z.cpu().numpy()
