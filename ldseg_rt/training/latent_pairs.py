"""The latents of a training set under frozen encoders: for training the denoiser alone.

LDSeg's denoiser learns on pairs (z_i, z_l): the image encoder's embedding of an image and the
label encoder's latent of its label. When both encoders (and the decoder) are given and stay
fixed, as with the published official LDSeg networks whose denoisers were never released, every
pair can be computed once per example and flip instead of at every step; a 3-D step then costs
the denoiser alone (8x8x16 latents) instead of two encoders over 128x128x256 volumes.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from .batches import FLIPS

log = logging.getLogger(__name__)


class LatentPairs:
    """(z_i, z_l) float32 arrays for every example of `dataset` under every flip (or none if not
    `augment`), from the model's image and label encoders in eval mode."""

    def __init__(self, model, dataset, augment: bool = True, progress: bool = True):
        flips = FLIPS if augment else FLIPS[:1]
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        self.pairs = []
        try:
            with torch.no_grad():
                for i in tqdm(range(len(dataset)), desc="encoding", disable=not progress, unit="example"):
                    image, label = (torch.from_numpy(np.ascontiguousarray(a))[None].to(device) for a in dataset[i])
                    for dims in flips:
                        x, y = (image.flip(dims), label.flip(dims)) if dims else (image, label)
                        self.pairs.append((model.image_encoder(x)[0].cpu().numpy(),
                                           model.label_encoder(y[:, None].float())[0].cpu().numpy()))
        finally:
            model.train(was_training)
        log.info("encoded %d examples under %d flip(s)", len(dataset), len(flips))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[i]
