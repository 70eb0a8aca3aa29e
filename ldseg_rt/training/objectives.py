"""The training objectives of both families, per batch.

LDSeg: all four networks end to end, as in the original:
    z_l = labelEnc(y), z_i = E(x), z_t = sqrt(ab_t) z_l + sqrt(1 - ab_t) eps,
    eps_hat = D(z_t, z_i, t), y_hat = G(z_t - eps_hat),
    loss = CE(y, y_hat) + 2 (1 - Dice(y, y_hat)) + MSE(eps, eps_hat),
with t uniform on the integers [0, T). One deliberate difference: the original draws one eps
for the whole batch; here every sample has its own. With the encoders and the decoder frozen
(TrainSettings.denoiser_only), only the MSE term depends on what learns: the objective is
MSE(eps, eps_hat) on precomputed (z_i, z_l) pairs (ldseg_rt.training.latent_pairs).

Pixel-space ambiguous segmentation: each image is paired with one of its annotations, picked
uniformly, x0 = 2m - 1, t stratified on [0, 1], and the U-Net's output is judged by the
weighted x-space MSE of ldseg_rt.training.pixel_loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.schedules import cosine_alpha_bar
from ..models import AmbiguousModel, LDSeg
from .pixel_loss import pixel_loss, sample_t, training_target


def segmentation_terms(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LDSeg's segmentation terms of (B, C, H, W) probabilities against (B, H, W) class ids (or
    volumes alike): cross-entropy (probabilities clipped as Keras does) and the soft Dice over the batch."""
    onehot = F.one_hot(labels, probs.shape[1]).movedim(-1, 1).float()
    ce = -(onehot * probs.clamp(1e-7, 1.0).log()).sum(1).mean()
    dice = 2 * (onehot * probs).sum() / (onehot.sum() + probs.sum() + 1e-6)
    return ce, dice


def noised(cfg, z_l: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(ab_t) z_l + sqrt(1 - ab_t) eps, per sample."""
    ab = torch.as_tensor(cosine_alpha_bar(t.cpu().numpy(), cfg.timesteps, cfg.cosine_s),
                         dtype=torch.float32, device=z_l.device).view(-1, *[1] * (z_l.dim() - 1))
    return ab.sqrt() * z_l + (1 - ab).sqrt() * eps


def ldseg_losses(model: LDSeg, images, labels, t, eps) -> dict:
    """The LDSeg objective for a batch, through all four networks."""
    z_t = noised(model.config, model.label_encoder(labels[:, None].float()), t, eps)
    eps_hat = model.denoiser(z_t, model.image_encoder(images), t.float())
    ce, dice = segmentation_terms(model.decoder(z_t - eps_hat), labels)
    mse = F.mse_loss(eps_hat, eps)
    return {"loss": ce + 2 * (1 - dice) + mse, "ce": ce, "dice": dice, "mse": mse}


def draw_t_eps(cfg, batch: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's t, uniform on [0, T), and eps of the latent's shape, per sample."""
    t = torch.randint(cfg.timesteps, (batch,), generator=gen)
    eps = torch.randn((batch, *cfg.latent_shape), generator=gen)
    return t.to(device), eps.to(device)


def ldseg_objective(model: LDSeg, images, labels, gen: torch.Generator) -> dict:
    t, eps = draw_t_eps(model.config, len(images), gen, images.device)
    return ldseg_losses(model, images, labels.long(), t, eps)


def denoiser_objective(model: LDSeg, z_i, z_l, gen: torch.Generator) -> dict:
    """The MSE term alone, on precomputed image embeddings and label latents."""
    t, eps = draw_t_eps(model.config, len(z_l), gen, z_l.device)
    mse = F.mse_loss(model.denoiser(noised(model.config, z_l, t, eps), z_i, t.float()), eps)
    return {"loss": mse, "mse": mse}


def pixel_objective(model: AmbiguousModel, images, annotations, gen: torch.Generator) -> dict:
    """The paper's objective on one annotation per image, picked uniformly."""
    cfg, batch = model.config, len(images)
    pick = torch.randint(annotations.shape[1], (batch,), generator=gen)
    x0 = 2 * annotations[torch.arange(batch), pick][:, None].float() - 1
    t = sample_t(batch, gen)
    eps = torch.randn(x0.shape, generator=gen)
    x0, t, eps = x0.to(images.device), t.to(images.device), eps.to(images.device)
    x_t, _ = training_target(x0, eps, t, cfg.input_scale, cfg.prediction, cfg.logsnr_clamp)
    return {"loss": pixel_loss(model.denoiser(x_t, images, t), x0, eps, t, cfg)}


OBJECTIVES = {"ldseg": ldseg_objective, "ambiguous": pixel_objective}
