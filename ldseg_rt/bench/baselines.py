"""The two plain-PyTorch pipelines the Segmenter is measured against, fp32 with the same
weights and the C++ sampler's Philox noise: `eager_per_sample` (the whole pipeline once per
sample, as the original code does) and `eager_batched` (the encoder once, the n samples as
one batch), with their shared pieces: noise, renormalisation, one step of the table, the
step loop and the final aggregation."""
from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ..diffusion import RENORM_EPS
from ..sampling_plan import SamplingPlan


def _noise(seed: int, samples, step: int, stream: int, shape, device) -> torch.Tensor:
    """The C++ sampler's Philox normals (float64) for the given sample indices."""
    numel = int(np.prod(shape))
    rows = np.stack([_C.normal(seed, k, step, stream, numel) for k in samples])
    return torch.from_numpy(rows).reshape(len(rows), *shape).to(device)


def _renormalize(z: torch.Tensor) -> torch.Tensor:
    flat = z.reshape(len(z), -1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, keepdim=True, correction=0) + RENORM_EPS)
    return flat.reshape(z.shape)


def _step(z: torch.Tensor, out: torch.Tensor, row, plan: SamplingPlan, noise) -> torch.Tensor:
    """One row of the step table in float64 (z and out float64)."""
    _, a, s, c_x0, c_eps, c_z, sigma = (float(v) for v in row)

    def eps_from_x0(x0):
        return (z - a * x0) / s if s > 0 else torch.zeros_like(z)

    if plan.prediction == "eps":
        x0, eps = (z - s * out) / a, out
    elif plan.prediction == "x":
        x0, eps = out, eps_from_x0(out)
    else:
        x0, eps = a * z - s * out, s * z + a * out
    if plan.clip > 0:
        x0 = x0.clamp(-plan.clip, plan.clip)
        eps = eps_from_x0(x0)
    new = c_x0 * x0 + c_eps * eps + c_z * z
    return new + sigma * noise if sigma != 0 else new


def _loop(model, condition: torch.Tensor, seed: int, samples, plan: SamplingPlan) -> torch.Tensor:
    """The plan's steps for the given sample indices as one batch; float32 final latents."""
    device = condition.device
    z = _noise(seed, samples, 0, _C.STREAM_INIT, plan.latent_shape, device)
    if plan.renormalize:
        z = _renormalize(z)
    for i, row in enumerate(plan.table):
        t = torch.full((len(z),), float(np.float32(row[0])), dtype=torch.float32, device=device)
        out = model.denoiser(z.float(), condition, t).double()
        noise = _noise(seed, samples, i, _C.STREAM_STEP, plan.latent_shape, device) if row[6] != 0 else None
        z = _step(z, out, row, plan, noise)
        if plan.renormalize:
            z = _renormalize(z)
    return z.float()


def _finish(probs: torch.Tensor, size) -> tuple[np.ndarray, np.ndarray]:
    from ..aggregate import resize_probs
    from ..kernels.aggregate import aggregate_reference
    samples, mean, mask, uncertainty = aggregate_reference(resize_probs(probs.float(), size))
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
