"""Dice of the built-in model on held-out synthetic phantoms (fresh seeds, never trained
on: training uses seeds below 100,000), consensus of n samples per image.

    .venv/bin/python benchmarks/builtin_dice.py [--images 100] [--first-seed S] [-n 16]
"""
import argparse
import secrets

from ldseg_rt import Segmenter
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.evaluation.scoring import evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:phantom")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--first-seed", type=int, help="default: a fresh random seed >= 10,000,000")
    parser.add_argument("-n", type=int, default=16)
    args = parser.parse_args()
    first = args.first_seed if args.first_seed is not None else 10_000_000 + secrets.randbelow(10 ** 9)
    seg = Segmenter(args.model)
    size, channels = seg.config.image_size, seg.config.in_channels
    examples = (make_phantom(size, first + i, channels) for i in range(args.images))
    result = evaluate(seg, examples, n=args.n, seed=first)
    print(f"{args.model}: {args.images} phantoms, seeds {first}..{first + args.images - 1}, n={args.n}")
    print(result.summary())


if __name__ == "__main__":
    main()
