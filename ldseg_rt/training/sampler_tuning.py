"""Sampler tuning for LDSeg: `python -m ldseg_rt tune-sampler MODEL --out OUT`.

LDSeg trains its networks one denoising step at a time, but a segmentation comes out of the
whole sampler: the image encoder's condition, 15 DDIM steps of the denoiser with the latent
renormalised after each, then the decoder. Sampler tuning fine-tunes those three networks
together through that chain: each step runs the sampler exactly as `Segmenter.sample` does
(same step table and renormalisation, one sample per image, fresh initial noise), decodes,
and descends CE + 2 (1 - Dice) of the result, with the gradient carried back through every
step. Unlike the training loss, whose soft Dice pools all classes and so is mostly background,
the Dice here is the mean over the foreground classes present, as segmentations are judged.
BatchNorm statistics are kept and dropout is off (the networks run as at inference); the
label encoder is not used.

Every step's randomness (batch, flips, initial noise) comes from a generator seeded by
(seed, step), as in training. Built-in model: RESULTS.md gives the Dice before/after.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..diffusion.parameterization import to_x0_eps
from ..diffusion.plan import SamplingPlan, sampling_plan
from ..diffusion.renormalize import renormalize
from ..errors import InvalidArgumentError
from ..models.checkpoint import save_inference_checkpoint
from .batches import draw_batch, step_generator
from .objectives import segmentation_terms
from .settings import check_settings


@dataclass
class SamplerTuningSettings:
    steps: int = 1200
    batch_size: int = 8
    lr: float = 1e-4
    clip_grad: float = 1.0  # max gradient norm: the chain of 15 steps can amplify a gradient
    seed: int = 0
    checkpoint_every: int = 0  # also write OUT.stepK.pt every K steps; 0 writes only OUT

    def __post_init__(self):
        check_settings(self, positive=("batch_size", "lr"),
                       non_negative=("steps", "clip_grad", "checkpoint_every", "seed"))


def differentiable_sample(denoiser, z_i: torch.Tensor, z_T: torch.Tensor, plan: SamplingPlan) -> torch.Tensor:
    """The sampler's final latents for condition z_i from initial noise z_T, in float32 torch
    with the autograd graph kept (deterministic plans only: eta 0)."""
    if plan.table[:, 6].any():
        raise InvalidArgumentError("sampler tuning follows the deterministic sampler (eta 0); this plan adds noise")
    z = renormalize(z_T) if plan.renormalize else z_T
    for t_model, a, s, c_x0, c_eps, c_z, _ in plan.table.tolist():
        out = denoiser(z, z_i, torch.full((len(z),), t_model, dtype=torch.float32))
        x0, eps = to_x0_eps(out, z, a, s, plan.prediction)
        z = c_x0 * x0 + c_eps * eps + c_z * z
        if plan.renormalize:
            z = renormalize(z)
    return z


def foreground_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE + 2 (1 - mean soft Dice of the foreground classes present in the batch labels), for
    (B, C, H, W) probabilities against (B, H, W) class ids; CE as in the training loss."""
    ce, _ = segmentation_terms(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).permute(0, 3, 1, 2).float()
    truth, overlap = onehot.sum((0, 2, 3)), (onehot * probs).sum((0, 2, 3))
    dice = 2 * overlap / (truth + probs.sum((0, 2, 3)) + 1e-6)
    present = truth[1:] > 0
    foreground = dice[1:][present].mean() if present.any() else probs.new_ones(())
    return ce + 2 * (1 - foreground)


def tuning_loss(model, images: torch.Tensor, labels: torch.Tensor, z_T: torch.Tensor, plan: SamplingPlan):
    """foreground_loss of the decoded samples, one per image, from initial noise z_T."""
    latents = differentiable_sample(model.denoiser, model.image_encoder(images), z_T, plan)
    return foreground_loss(model.decoder(latents), labels)


def tune_sampler(model, dataset, settings: SamplerTuningSettings, out=None, progress: bool = True):
    """A copy of the LDSeg `model` whose image encoder, denoiser and decoder are fine-tuned
    through its sampler on `dataset`; with `out` and settings.checkpoint_every, snapshots
    OUT.stepK.pt are written along the way."""
    if model.config.family != "ldseg":
        raise InvalidArgumentError("sampler tuning applies to LDSeg models")
    cfg = model.config
    plan = sampling_plan(cfg, cfg.steps, float(cfg.eta))
    model = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for net in (model.image_encoder, model.denoiser, model.decoder) for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    bar = tqdm(range(1, settings.steps + 1), desc="tuning the sampler", unit="step", disable=not progress)
    for step in bar:
        gen = step_generator(settings.seed, step)
        images, labels = draw_batch(dataset, settings.batch_size, gen)
        z_T = torch.randn((settings.batch_size, *cfg.latent_shape), generator=gen)
        with torch.enable_grad():
            loss = tuning_loss(model, images, labels.long(), z_T, plan)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if settings.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.clip_grad)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if out is not None and settings.checkpoint_every and step % settings.checkpoint_every == 0:
            save_inference_checkpoint(model, Path(out).with_suffix(f".step{step}.pt"))
    return model.requires_grad_(False)

