"""Training of both families (objectives in ldseg_rt.training.objectives): Adam, an EMA
(0.999) of the denoiser that is what a checkpoint's inference weights hold, checkpoints every
K steps, and exact resumption (every step's randomness, batch, flips, t, eps and dropout,
comes from a generator keyed by (seed, step)). An LDSeg model whose encoders and decoder are
given (the official networks) can have its denoiser trained alone (denoiser_only)."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..backends import resolve_device
from ..configs import ROBUST, config_from_dict
from ..errors import InvalidArgumentError, ModelLoadError
from ..models import build_model
from ..models.checkpoint import read_checkpoint, save_checkpoint
from ..pipeline.preprocess import statistics_range
from .batches import draw_batch, step_generator
from .latent_pairs import LatentPairs
from .objectives import OBJECTIVES, denoiser_objective
from .settings import check_settings

STATISTICS_EXAMPLES = 512  # training images the recorded input statistics are taken over, evenly spaced


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
    denoiser_only: bool = False  # LDSeg: train the denoiser alone, the other networks frozen as given

    def __post_init__(self):
        check_settings(self, positive=("batch_size", "lr", "checkpoint_every"), non_negative=("steps", "seed", "clip_grad"))
        if not 0 <= self.ema < 1:
            raise InvalidArgumentError(f"ema must be in [0, 1), got {self.ema!r}")


class Trainer:
    """Holds the networks, the denoiser's EMA and the optimiser; saves and resumes."""

    def __init__(self, cfg, settings: TrainSettings, device="auto", init_seed: int = 0, model=None):
        """model: the networks to start from (say, the official ones); by default `cfg`'s, initialised
        from init_seed."""
        if settings.denoiser_only and cfg.family != "ldseg":
            raise InvalidArgumentError(f"denoiser_only trains LDSeg's denoiser on frozen encoders; "
                                       f"{cfg.name!r} is of the {cfg.family} family")
        self.settings = settings
        self.device = resolve_device(device)
        self.model = (model if model is not None else build_model(cfg, seed=init_seed)).to(self.device)
        self.ema = copy.deepcopy(self.model.denoiser).eval().requires_grad_(False)
        learns = self.model.denoiser if settings.denoiser_only else self.model
        self.optimizer = torch.optim.Adam(learns.parameters(), lr=settings.lr)
        self.step = 0

    @classmethod
    def resume(cls, path, settings: TrainSettings | None = None, device="auto") -> "Trainer":
        """Continue a run from its checkpoint: all networks, the EMA, the optimiser."""
        payload = read_checkpoint(path)
        state = payload.get("training")
        if state is None:
            raise ModelLoadError(f"{path} holds inference weights only (no training state); it cannot be resumed")
        was_denoiser_only = state["settings"].get("denoiser_only", False)
        if settings is not None and settings.denoiser_only != was_denoiser_only:
            trained = "the denoiser alone" if was_denoiser_only else "all networks"
            raise InvalidArgumentError(f"{path} is a run that trained {trained}; resume it with denoiser_only="
                                       f"{was_denoiser_only} (its optimiser holds the state of those weights only)")
        trainer = cls(config_from_dict(payload["config"], payload.get("family", "ldseg")),
                      settings or TrainSettings(**state["settings"]), device)
        trainer.model.load_state_dict(payload["state_dict"])
        trainer.model.input_statistics = payload.get("input_statistics")
        trainer.model.slice_axis = payload.get("slice_axis")
        trainer.model.preprocessing = payload.get("preprocessing", ROBUST)
        trainer.ema.load_state_dict(trainer.model.denoiser.state_dict())
        trainer.model.denoiser.load_state_dict(state["denoiser"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        for group in trainer.optimizer.param_groups:  # a resumed run may change the rate
            group["lr"] = trainer.settings.lr
        trainer.step = state["step"]
        return trainer

    def train_step(self, dataset) -> dict:
        """One step on a batch drawn from `dataset`: (image, label) examples, or with denoiser_only
        the LatentPairs of such examples (they hold every flip already)."""
        s, cfg = self.settings, self.model.config
        gen = step_generator(s.seed, self.step)
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen)))  # dropout
        if s.denoiser_only:
            self.model.denoiser.train()
            objective, augment = denoiser_objective, False
        else:
            self.model.train()
            objective, augment = OBJECTIVES[cfg.family], s.augment
        inputs, targets = draw_batch(dataset, s.batch_size, gen, augment)
        losses = objective(self.model, inputs.to(self.device), targets.to(self.device), gen)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if s.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], s.clip_grad)
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
        """Train up to settings.steps, saving every checkpoint_every steps; on return `out`
        always holds a checkpoint of the current step, even when no step was left to run. The
        checkpoint records the statistics of the training images, so that the Segmenter can flag
        images unlike them, and for slices of volumes the axis they were cut along. With
        denoiser_only, the examples are encoded once (every flip if augment) before the first step."""
        s = self.settings
        if getattr(dataset, "slice_axis", None) is not None:
            self.model.slice_axis = dataset.slice_axis
        if getattr(self.model, "input_statistics", None) is None:
            picks = np.linspace(0, len(dataset) - 1, min(len(dataset), STATISTICS_EXAMPLES)).round().astype(int)
            self.model.input_statistics = statistics_range(dataset[int(i)][0] for i in picks)
        if s.denoiser_only and self.step < s.steps:
            dataset = LatentPairs(self.model, dataset, s.augment, progress)
        saved_at = None
        bar = tqdm(total=s.steps, initial=self.step, disable=not progress, desc="training", unit="step")
        while self.step < s.steps:
            losses = self.train_step(dataset)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if self.step % s.checkpoint_every == 0:
                self.save(out)
                saved_at = self.step
        bar.close()
        if saved_at != self.step:
            self.save(out)
