"""Command line: `python -m ldseg_rt demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
EXAMPLE = DATA_DIR / "example.png"
EXAMPLE_LABEL = DATA_DIR / "example_label.png"


def run_demo(args) -> None:
    from . import Segmenter
    from .figure import save_figure
    from .io import read_image, read_label
    from .metrics import dice_per_class

    seg = Segmenter(args.model)
    image = read_image(args.image)
    print(f"model {args.model} ({seg.config.name} configuration), backend {seg.backend_name}, "
          f"image {args.image} {image.shape}")
    res = seg.sample(image, n=args.n, seed=args.seed)
    print(f"{args.n} samples, seed {res.seed}; time per stage:")
    for stage, ms in res.timings.items():
        print(f"  {stage:<12}{ms:9.1f} ms")
    label = read_label(EXAMPLE_LABEL) if Path(args.image) == EXAMPLE else None
    if label is not None:
        scores = dice_per_class(res.mask, label, seg.config.num_classes)
        print("consensus Dice against the example's label: " +
              ", ".join(f"class {c + 1} {d:.3f}" for c, d in enumerate(scores)))
    figure = save_figure(image, res, args.out, title=f"{args.model}, n={args.n}", label=label)
    print(f"mean uncertainty {float(res.uncertainty.mean()):.3f}; figure written to {figure}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="segment an image n times, print timings, write a figure")
    demo.add_argument("--model", default="builtin:phantom", help="checkpoint path or builtin:NAME")
    demo.add_argument("--image", default=str(EXAMPLE), help="image file (PNG, BMP, TIFF, NPY)")
    demo.add_argument("-n", type=int, default=16, help="number of samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="ldseg_demo.png", help="where to write the figure (PNG)")
    demo.set_defaults(run=run_demo)
    args = parser.parse_args(argv)
    args.run(args)
