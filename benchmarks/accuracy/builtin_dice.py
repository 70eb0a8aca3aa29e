"""Dice of the built-in model on held-out synthetic phantoms (fresh seeds, never trained
on: training uses seeds below 100,000), consensus of n samples per image, and how its
uncertainty map relates to its errors. Writes its section of benchmarks/RESULTS.md unless
--no-write.

    python benchmarks/accuracy/builtin_dice.py [--images 100] [--first-seed S] [-n 16]
"""
import argparse
import secrets

from ldseg_rt import Segmenter
from ldseg_rt.bench.report import evaluation_markdown
from ldseg_rt.bench.script import parse_args, publish
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.evaluation.scoring import evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:phantom")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--first-seed", type=int, help="default: a fresh random seed >= 10,000,000")
    parser.add_argument("-n", type=int, default=16)
    args = parse_args(parser)
    first = args.first_seed if args.first_seed is not None else 10_000_000 + secrets.randbelow(10 ** 9)
    seg = Segmenter(args.model)
    size, channels = seg.config.image_size, seg.config.in_channels
    examples = (make_phantom(size, first + i, channels) for i in range(args.images))
    result = evaluate(seg, examples, n=args.n, seed=first)
    report = (f"{args.model}: {args.images} phantoms, seeds {first}..{first + args.images - 1}, consensus of "
              f"n={args.n}:\n\n{evaluation_markdown(result)}")
    print(report)
    publish(__file__, report, no_write=args.no_write)


if __name__ == "__main__":
    main()
