"""LDSeg 3-D (`knee3d`) on real knee MRI, on a CPU: a denoiser trained for the published official
3-D networks on knee cases 1-4 of ../shared/data/ldseg-demo, case 5 segmented whole at n=16.

The authors published their 3-D image encoder, label encoder and label decoder but not their
denoiser (../shared/data/ldseg-official/README.md). Training all four networks from scratch on
128x128x256 volumes is out of a CPU's reach (this script times one such step); so the published
networks are kept frozen and only a denoiser is trained, on their latents (`python -m ldseg_rt
train --from-keras DIR --config knee3d --denoiser-only`, the MSE term of the objective). The
official networks may have been trained on data that includes these cases.

Stages, each kept in --work so that a rerun skips what is done: the denoiser's training (the
checkpoint), the export (the bundle), then case 5 evaluated (volume Dice per bone of the n=16
consensus at the input's 240x104x160, uncertainty on wrong vs right voxels) and sample() timed per
backend, and one step of four-network training timed. Needs ../shared; the figures go to its
section of benchmarks/RESULTS.md unless --no-write.

    python benchmarks/accuracy/knee3d.py [--steps 4000] [--work /tmp/ldseg_knee3d] [--backends onnxruntime,torch]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ldseg_rt import Segmenter
from ldseg_rt.bench.report import evaluation_markdown, format_markdown_table
from ldseg_rt.bench.script import parse_args, publish, shared_data
from ldseg_rt.configs import get_config
from ldseg_rt.evaluation.scoring import evaluate
from ldseg_rt.export import export_bundle
from ldseg_rt.export.keras_weights import keras_files, load_keras_model
from ldseg_rt.io.nifti import read_volume
from ldseg_rt.models.checkpoint import load_checkpoint
from ldseg_rt.training.dataset import build_dataset
from ldseg_rt.training.trainer import Trainer, TrainSettings

OFFICIAL = shared_data(__file__) / "ldseg-official" / "savedModels"
KNEE = shared_data(__file__) / "ldseg-demo" / "Knee"
TRAIN_CASES, TEST_CASE = (1, 2, 3, 4), 5


def linked_cases(into: Path) -> tuple[Path, Path]:
    """Folders of links to the training cases' volumes and labels (the demo folder also holds case 5)."""
    images, labels = into / "images", into / "labels"
    for folder in (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    for i in TRAIN_CASES:
        for source, folder in ((KNEE / "Image" / f"Case{i}.nii.gz", images),
                               (KNEE / "Label" / f"Case{i}_label.nii.gz", labels)):
            if not (folder / source.name).exists():
                (folder / source.name).symlink_to(source)
    return images, labels


def official_without_denoiser(into: Path) -> Path:
    """The published 3-D networks, linked into a folder of their own (the denoiser file is absent)."""
    into.mkdir(parents=True, exist_ok=True)
    for network, file in keras_files(get_config("knee3d")).items():
        if network != "denoiser" and not (into / file).exists():
            (into / file).symlink_to(OFFICIAL / file)
    return into


def train_denoiser(work: Path, settings: TrainSettings) -> Path:
    checkpoint = work / "knee3d_denoiser.pt"
    if checkpoint.exists():
        trainer = Trainer.resume(checkpoint, settings)
    else:
        model = load_keras_model(official_without_denoiser(work / "official"), "knee3d", optional=("denoiser",))
        trainer = Trainer(get_config("knee3d"), settings, "cpu", model=model)
    if trainer.step >= settings.steps:
        return checkpoint
    images, labels = linked_cases(work / "train")
    start = time.perf_counter()
    dataset = build_dataset(trainer.model.config, str(images), str(labels), mode=trainer.model.preprocessing)
    print(f"read and prepared cases {TRAIN_CASES}: {time.perf_counter() - start:.0f} s")
    first, start = trainer.step, time.perf_counter()
    trainer.fit(dataset, checkpoint)
    print(f"encoding (every case and flip) and {trainer.step - first} denoiser steps of batch "
          f"{settings.batch_size}: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} threads)")
    return checkpoint


def exported(work: Path, checkpoint: Path):
    out = work / "knee3d.ldseg"
    if (out / "manifest.json").is_file():
        return out
    start = time.perf_counter()
    bundle = export_bundle(load_checkpoint(checkpoint), out, source="knee3d: official networks, denoiser trained "
                           "on knee cases 1-4", check_batches=(1,), progress=False)
    print(f"export (ONNX + check at batch 1): {time.perf_counter() - start:.0f} s")
    return bundle.path


def four_network_step_seconds(steps: int) -> float:
    """One training step of all four networks end to end (what training from scratch would repeat)."""
    trainer = Trainer(get_config("knee3d"), TrainSettings(batch_size=1), device="cpu")
    cfg = trainer.model.config
    rng = np.random.default_rng(0)
    example = [(rng.random((1, *cfg.image_shape), dtype=np.float32),
                rng.integers(0, 3, cfg.image_shape).astype(np.uint8))]
    trainer.train_step(example)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(example)
    return (time.perf_counter() - start) / steps


def measure_backends(bundle, image: np.ndarray, label: np.ndarray, backends: list[str], n: int):
    """Case 5 evaluated on the first backend, then sample() of the volume once per backend (the first
    after that warm-up): the evaluation, and each stage's time as a markdown table."""
    rows, stages, evaluation = [], [], None
    for backend in backends:
        seg = Segmenter(bundle, backend=backend)
        if evaluation is None:
            evaluation = evaluate(seg, [(image, label)], n=n, progress=False)
        timings = seg.sample(image, n=n, seed=1, return_samples=False).timings
        stages = stages or list(timings)
        rows.append([backend, *(f"{timings[k] / 1e3:.1f} s" for k in stages)])
        print(f"sample() on {backend}, n={n}: " + ", ".join(f"{k} {v / 1e3:.1f} s" for k, v in timings.items()),
              flush=True)
    return evaluation, format_markdown_table(["backend", *stages], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="denoiser training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--backends", default="onnxruntime,torch", help="sample() timed on each, in turn")
    parser.add_argument("--four-network-steps", type=int, default=1, help="timed four-network steps (0: none)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ldseg_knee3d"),
                        help="where the checkpoint and the bundle are kept (and found by a rerun)")
    args = parse_args(parser)
    if not (KNEE.is_dir() and OFFICIAL.is_dir()):
        print(f"skipped: {KNEE} or {OFFICIAL} is absent")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = exported(work, train_denoiser(work, TrainSettings(steps=args.steps, batch_size=args.batch_size,
                                                                denoiser_only=True, checkpoint_every=500)))
    image, label = (read_volume(p)[0] for p in (KNEE / "Image" / f"Case{TEST_CASE}.nii.gz",
                                                KNEE / "Label" / f"Case{TEST_CASE}_label.nii.gz"))
    backends = args.backends.split(",")
    evaluation, timings = measure_backends(bundle, image.astype(np.float32), np.rint(label).astype(np.int64),
                                           backends, args.n)
    report = (f"case {TEST_CASE}, the whole volume {'x'.join(map(str, image.shape))}, consensus of n={args.n} "
              f"({backends[0]}), denoiser trained {args.steps} steps:\n\n{evaluation_markdown(evaluation)}\n\n"
              f"sample() of the volume at n={args.n}, one call per backend:\n\n{timings}")
    if args.four_network_steps:
        report += (f"\n\nOne four-network training step, batch 1: "
                   f"{four_network_step_seconds(args.four_network_steps):.1f} s ({torch.get_num_threads()} threads).")
    print(report)
    publish(__file__, report, no_write=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
