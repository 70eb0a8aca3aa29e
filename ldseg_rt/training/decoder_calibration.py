"""Decoder calibration for LDSeg: `python -m ldseg_rt calibrate-decoder MODEL --out OUT`.

LDSeg trains its decoder on z_t - eps_hat over every t, but at inference hands it the
sampler's final latent (DDIM, renormalised after every step), which it never saw in training.
This stage fine-tunes the decoder alone on exactly those latents: for each training
image the sampler runs as `Segmenter.sample` would (same plan, one sample), and the decoder
learns to map its final latent to the label with the training loss's segmentation terms,
CE + 2 (1 - Dice). The image encoder, denoiser and label encoder are not touched, so the
latents stay those sampling produces. Built-in model: RESULTS.md gives the Dice before/after.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..backends.torch_backend import TorchBackend
from ..diffusion.plan import sampling_plan
from ..errors import InvalidArgumentError
from .objectives import segmentation_terms
from .settings import check_settings


@dataclass
class CalibrationSettings:
    examples: int = 3000  # training examples, one sampled latent each
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        check_settings(self, positive=("examples", "batch_size", "lr"),
                       non_negative=("steps", "seed"))


def segmentation_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE + 2 (1 - soft Dice): LDSeg's training loss without its denoiser term."""
    ce, dice = segmentation_terms(probs, labels)
    return ce + 2 * (1 - dice)


def sampled_latents(model, images: np.ndarray, seeds: list[int], batch: int = 16, progress: bool = True) -> np.ndarray:
    """The final latent sample() gives each image (n=1) for its seed, on the CPU."""
    backend = TorchBackend(model, torch.device("cpu"))
    plan = sampling_plan(model.config, model.config.steps, float(model.config.eta))
    out = []
    for start in tqdm(range(0, len(images), batch), desc="sampling latents", disable=not progress):
        z_i = backend.encode(images[start:start + batch])
        out.append(backend.sample_latents(z_i, seeds[start:start + batch], 1, plan))
    return np.concatenate(out)


def calibrate_decoder(model, dataset, settings: CalibrationSettings, progress: bool = True):
    """A copy of the LDSeg `model` whose decoder is fine-tuned on the sampler's latents for
    the first `settings.examples` examples of `dataset` (BatchNorm statistics kept)."""
    if model.config.family != "ldseg":
        raise InvalidArgumentError("decoder calibration applies to LDSeg models (the pixel-space family's "
                                   "decoder is a fixed threshold)")
    count = min(settings.examples, len(dataset))
    images, labels = (np.stack(a) for a in zip(*(dataset[i] for i in range(count))))
    seeds = [int(s) for s in np.random.default_rng(settings.seed).integers(2 ** 63, size=count)]
    latents = torch.from_numpy(sampled_latents(model, images, seeds, progress=progress))
    labels = torch.from_numpy(labels).long()
    model = copy.deepcopy(model).eval()  # eval: BatchNorm statistics and dropout as at inference
    decoder = model.decoder
    optimizer = torch.optim.Adam(decoder.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    bar = tqdm(range(settings.steps), desc="calibrating decoder", unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(count, (settings.batch_size,), generator=gen)
        with torch.enable_grad():
            loss = segmentation_loss(decoder(latents[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return model

