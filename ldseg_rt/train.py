"""Training of both families (SPEC section 1): `python -m ldseg_rt.train`.

LDSeg (L): all four networks are trained end to end, as in the original:
    z_l = labelEnc(y), z_i = E(x), z_t = sqrt(ab_t) z_l + sqrt(1 - ab_t) eps,
    eps_hat = D(z_t, z_i, t), y_hat = G(z_t - eps_hat),
    loss = CE(y, y_hat) + 2 (1 - Dice(y, y_hat)) + MSE(eps, eps_hat),
with t uniform on the integers [0, T), Adam (lr 1e-3), random flips, and an EMA (0.999) of
the denoiser: the EMA is what a checkpoint's inference weights hold. One deliberate
difference: the original draws one eps for the whole batch; here every sample has its own.

Pixel-space ambiguous segmentation (P): each image is paired with one of its annotations,
picked uniformly, x0 = 2m - 1, t stratified on [0, 1], and the U-Net's output is judged by the
weighted x-space MSE of ldseg_rt.pixel_diffusion.pixel_loss; the EMA is of the U-Net.

Every step's randomness (batch, flips, t, eps, dropout) comes from a generator seeded by
(seed, step), so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .backends import resolve_device
from .checkpoint import read_checkpoint, save_checkpoint, save_inference_checkpoint
from .configs import config_from_dict, get_config
from .diffusion import cosine_alpha_bar
from .models import AmbiguousModel, LDSeg, build_model
from .pixel_diffusion import pixel_loss, sample_t, training_target
from .training_data import build_dataset


@dataclass
class TrainSettings:
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-3
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    augment: bool = True
    clip_grad: float = 0.0  # max gradient norm; 0 is no clipping (the pixel-space original uses 1)


def segmentation_terms(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LDSeg's segmentation terms of (B, C, H, W) probabilities against (B, H, W) class ids:
    cross-entropy (probabilities clipped as Keras does) and the soft Dice over the batch."""
    onehot = F.one_hot(labels, probs.shape[1]).permute(0, 3, 1, 2).float()
    ce = -(onehot * probs.clamp(1e-7, 1.0).log()).sum(1).mean()
    dice = 2 * (onehot * probs).sum() / (onehot.sum() + probs.sum() + 1e-6)
    return ce, dice


def ldseg_losses(model: LDSeg, images, labels, t, eps) -> dict:
    """The LDSeg objective for a batch, through all four networks."""
    cfg = model.config
    z_l = model.label_encoder(labels[:, None].float())
    z_i = model.image_encoder(images)
    ab = torch.as_tensor(cosine_alpha_bar(t.cpu().numpy(), cfg.timesteps, cfg.cosine_s),
                         dtype=torch.float32, device=images.device)[:, None, None, None]
    z_t = ab.sqrt() * z_l + (1 - ab).sqrt() * eps
    eps_hat = model.denoiser(z_t, z_i, t.float())
    ce, dice = segmentation_terms(model.decoder(z_t - eps_hat), labels)
    mse = F.mse_loss(eps_hat, eps)
    return {"loss": ce + 2 * (1 - dice) + mse, "ce": ce, "dice": dice, "mse": mse}


def ldseg_objective(model: LDSeg, images, labels, gen: torch.Generator) -> dict:
    cfg = model.config
    t = torch.randint(cfg.timesteps, (len(images),), generator=gen)
    eps = torch.randn((len(images), *cfg.latent_shape), generator=gen)
    return ldseg_losses(model, images, labels.long(), t.to(images.device), eps.to(images.device))


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


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step of a run: every draw of the step comes from it, so a resumed run repeats them."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def _flip(x: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Per-sample flips as in the original: 0 none, 1 vertical, 2 horizontal, 3 both."""
    out = x.clone()
    for i, kind in enumerate(kinds.tolist()):
        dims = {0: (), 1: (-2,), 2: (-1,), 3: (-2, -1)}[kind]
        if dims:
            out[i] = x[i].flip(dims)
    return out


def draw_batch(dataset, batch_size: int, gen: torch.Generator, augment: bool = True):
    """A random batch of (images, labels) tensors from `dataset`, randomly flipped if `augment`."""
    index = torch.randint(len(dataset), (batch_size,), generator=gen).tolist()
    images, labels = (torch.from_numpy(np.stack(a)) for a in zip(*(dataset[i] for i in index)))
    if augment:
        kinds = torch.randint(4, (batch_size,), generator=gen)
        images, labels = _flip(images, kinds), _flip(labels, kinds)
    return images, labels


class Trainer:
    """Holds the networks, the denoiser's EMA and the optimiser; saves and resumes."""

    def __init__(self, cfg, settings: TrainSettings, device="auto", init_seed: int = 0):
        self.settings = settings
        self.device = resolve_device(device)
        self.model = build_model(cfg, seed=init_seed).to(self.device)
        self.ema = copy.deepcopy(self.model.denoiser).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.step = 0

    @classmethod
    def resume(cls, path, settings: TrainSettings | None = None, device="auto") -> "Trainer":
        """Continue a run from its checkpoint: all networks, the EMA, the optimiser."""
        payload = read_checkpoint(path)
        state = payload.get("training")
        if state is None:
            raise ValueError(f"{path} holds inference weights only; it cannot be resumed")
        trainer = cls(config_from_dict(payload["config"], payload.get("family", "ldseg")),
                      settings or TrainSettings(**state["settings"]), device)
        trainer.model.load_state_dict(payload["state_dict"])
        trainer.ema.load_state_dict(trainer.model.denoiser.state_dict())
        trainer.model.denoiser.load_state_dict(state["denoiser"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        for group in trainer.optimizer.param_groups:  # a resumed run may change the rate
            group["lr"] = trainer.settings.lr
        trainer.step = state["step"]
        return trainer

    def train_step(self, dataset) -> dict:
        s, cfg = self.settings, self.model.config
        gen = step_generator(s.seed, self.step)
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen)))  # dropout
        images, labels = draw_batch(dataset, s.batch_size, gen, s.augment)
        self.model.train()
        losses = OBJECTIVES[cfg.family](self.model, images.to(self.device), labels.to(self.device), gen)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if s.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
        self.optimizer.step()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.denoiser.parameters()):
                e.lerp_(p, 1 - s.ema)
        self.step += 1
        return {k: v.item() for k, v in losses.items()}

    def inference_model(self):
        """The model as it is used: the denoiser's EMA in place of the trained denoiser."""
        model = copy.deepcopy(self.model).eval()
        model.denoiser.load_state_dict(self.ema.state_dict())
        return model.cpu()

    def save(self, path) -> Path:
        training = {"denoiser": self.model.denoiser.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "step": self.step, "settings": asdict(self.settings)}
        return save_checkpoint(self.inference_model(), path, training=training)

    def fit(self, dataset, out, progress: bool = True) -> None:
        s = self.settings
        bar = tqdm(total=s.steps, initial=self.step, disable=not progress, desc="training", unit="step")
        while self.step < s.steps:
            losses = self.train_step(dataset)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self.save(out)
        bar.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="named configuration (ignored with --resume)")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic', or a folder of images (PNG, BMP, TIFF, NPY) or NIfTI volumes")
    parser.add_argument("--labels", help="folder of label maps matching --data by name")
    parser.add_argument("--axis", type=int, default=2, help="slicing axis for NIfTI volumes")
    parser.add_argument("--out", required=True, help="checkpoint written every --checkpoint-every steps")
    parser.add_argument("--resume", help="checkpoint of a run to continue (its settings, unless given here)")
    parser.add_argument("--inference-out", help="also write the finished model without training state")
    parser.add_argument("--device", default="auto")
    for name, value in asdict(TrainSettings()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    args = parser.parse_args(argv)

    stored = read_checkpoint(args.resume).get("training", {}).get("settings", {}) if args.resume else {}
    given = {k: getattr(args, k) for k in asdict(TrainSettings()) if getattr(args, k) is not None}
    settings = TrainSettings(**{**stored, **given})
    trainer = (Trainer.resume(args.resume, settings, args.device) if args.resume
               else Trainer(get_config(args.config), settings, args.device, init_seed=settings.seed))
    dataset = build_dataset(trainer.model.config, args.data, args.labels, args.axis)
    print(f"training {trainer.model.config.name} on {len(dataset)} examples ({args.data}) from step "
          f"{trainer.step} to {settings.steps}, batch {settings.batch_size}, device {trainer.device}")
    trainer.fit(dataset, args.out)
    print(f"wrote {args.out}")
    if args.inference_out:
        print(f"wrote {save_inference_checkpoint(trainer.inference_model(), args.inference_out)}")


if __name__ == "__main__":
    main()
