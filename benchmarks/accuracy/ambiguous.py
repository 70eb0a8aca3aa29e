"""The ambiguous-segmentation paper's finding, reproduced small on synthetic lesions whose
annotation distribution is known (ldseg_rt.data.ambiguous_lesions): x-prediction with input
scale b = 0.1 against eps-prediction with b = 1 at the same training budget, next to the
oracle (samples drawn from the true distribution) and a deterministic U-Net (one mask per
image). GED and HM-IoU of N samples against M annotations, mean over held-out images.

    python benchmarks/accuracy/ambiguous.py train x-b0.1 --steps 3000     # each variant, any order
    python benchmarks/accuracy/ambiguous.py train eps-b1 --steps 3000
    python benchmarks/accuracy/ambiguous.py train deterministic --steps 3000
    python benchmarks/accuracy/ambiguous.py evaluate                        # the table

`evaluate` writes the table to its section of benchmarks/RESULTS.md unless --no-write (and to
ambiguous_results.json in --out-dir, beside the checkpoints).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldseg_rt import Segmenter
from ldseg_rt.bench.report import format_markdown_table
from ldseg_rt.bench.script import parse_args, publish
from ldseg_rt.configs import get_config
from ldseg_rt.data.ambiguous_lesions import AmbiguousDataset
from ldseg_rt.evaluation.distribution import score_samples
from ldseg_rt.models.checkpoint import load_checkpoint, save_inference_checkpoint
from ldseg_rt.pipeline.preprocess import prepare
from ldseg_rt.training.dataset import AmbiguousSyntheticData
from ldseg_rt.training.trainer import Trainer, TrainSettings

BASE = get_config("amb_small")
VARIANTS = {"x-b0.1": dataclasses.replace(BASE, prediction="x", input_scale=0.1),
            "eps-b1": dataclasses.replace(BASE, prediction="eps", input_scale=1.0),
            "deterministic": dataclasses.replace(BASE, prediction="x", input_scale=1.0)}


def train(variant: str, args) -> None:
    cfg = VARIANTS[variant]
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, clip_grad=1.0,
                             checkpoint_every=args.steps, seed=args.seed)
    trainer = Trainer(cfg, settings, device="cpu", init_seed=args.seed)
    data = AmbiguousSyntheticData(cfg)
    if variant == "deterministic":
        _fit_deterministic(trainer, data)
    else:
        trainer.fit(data, args.out_dir / f"{variant}_train.pt")
    print("wrote", save_inference_checkpoint(trainer.inference_model(), args.out_dir / f"{variant}.pt"))


def _fit_deterministic(trainer: Trainer, data) -> None:
    """The same U-Net seeing no noise (x_t = 0, t = 1) learns the mean annotation by MSE
    against x0 = 2m - 1, over the same annotations and budget: a plain regression U-Net."""
    s, unet = trainer.settings, trainer.model.denoiser
    for step in tqdm(range(s.steps), desc="training deterministic", unit="step"):
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        index = torch.randint(len(data), (s.batch_size,), generator=gen).tolist()
        images, annotations = (torch.from_numpy(np.stack(a)) for a in zip(*(data[i] for i in index)))
        pick = torch.randint(annotations.shape[1], (s.batch_size,), generator=gen)
        x0 = 2 * annotations[torch.arange(s.batch_size), pick][:, None].float() - 1
        blank, t = torch.zeros_like(x0), torch.ones(s.batch_size)
        loss = torch.mean((unet(blank, images, t) - x0) ** 2)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), s.clip_grad)
        trainer.optimizer.step()
        with torch.no_grad():
            for e, p in zip(trainer.ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - s.ema)


def _deterministic_masks(model, image: np.ndarray, n: int) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(prepare(image, model.config).pixels)[None]
        out = model.denoiser(torch.zeros_like(x), x, torch.ones(1))
    return np.repeat((out[0].numpy() > 0).astype(np.uint8), n, axis=0)


def evaluate(args) -> None:
    cases = AmbiguousDataset.evaluation(BASE.image_size, count=args.images, annotators=args.annotators)
    samplers = {"oracle (true distribution)": lambda case, k: case.sample(args.n, k)}
    for variant in VARIANTS:
        path = args.out_dir / f"{variant}.pt"
        if not path.is_file():
            print(f"skipping {variant}: {path} not trained")
            continue
        if variant == "deterministic":
            model = load_checkpoint(path)
            samplers["deterministic U-Net"] = lambda case, k, m=model: _deterministic_masks(m, case.image, args.n)
        else:
            seg = Segmenter(path, backend="torch", device="cpu")
            samplers[variant] = lambda case, k, seg=seg: seg.sample(case.image, n=args.n, seed=k).samples
    rows = {name: score_samples(draw, cases, desc=name).mean() for name, draw in samplers.items()}
    table = format_markdown_table(["model", "GED (lower is better)", "HM-IoU (higher is better)"],
                                  [[name, f"{r['ged']:.3f} +- {r['ged_sem']:.3f}", f"{r['hm_iou']:.3f}"]
                                   for name, r in rows.items()])
    report = (f"{args.images} held-out synthetic cases, N={args.n} samples vs M={args.annotators} annotations, "
              f"mean over cases (+- standard error of the GED):\n\n{table}")
    print(report)
    (args.out_dir / "ambiguous_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    publish(__file__, report, no_write=args.no_write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--out-dir", type=Path, default=Path("ambiguous_runs"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=100, help="held-out cases to evaluate")
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("-n", type=int, default=16, help="samples per image")
    args = parse_args(parser)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "train":
        if args.variant is None:
            parser.error(f"train needs a variant: {', '.join(VARIANTS)}")
        train(args.variant, args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
