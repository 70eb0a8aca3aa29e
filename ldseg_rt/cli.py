"""Command line: `python -m ldseg_rt demo`."""
from __future__ import annotations

import argparse

import numpy as np


def demo_image(size: int, seed: int = 0) -> np.ndarray:
    """A grey disc and a brighter ellipse on a noisy background: something to segment."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = 40 + 10 * rng.standard_normal((size, size))
    img[(yy - 0.45) ** 2 + (xx - 0.4) ** 2 < 0.07] += 80
    img[((yy - 0.6) / 0.6) ** 2 + ((xx - 0.65) / 1.2) ** 2 < 0.02] += 60
    return img.astype(np.float32)


def run_demo(args) -> None:
    from . import Segmenter
    seg = Segmenter.from_config(args.config, seed=0)
    print(f"model: {args.config} configuration with random weights (no trained model ships yet); "
          f"backend {seg.backend_name}")
    img = demo_image(seg.config.image_size)
    if seg.config.in_channels > 1:
        img = np.repeat(img[..., None], seg.config.in_channels, axis=-1)
    res = seg.sample(img, n=args.n, seed=0)
    print(f"{args.n} samples of a {img.shape} image: samples {res.samples.shape}, "
          f"consensus classes {np.unique(res.mask).tolist()}, mean uncertainty {res.uncertainty.mean():.3f}")
    for stage, ms in res.timings.items():
        print(f"  {stage:<12}{ms:9.1f} ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="segment a generated image, n samples, and print timings")
    demo.add_argument("--config", default="small")
    demo.add_argument("-n", type=int, default=16)
    demo.set_defaults(run=run_demo)
    args = parser.parse_args(argv)
    args.run(args)
