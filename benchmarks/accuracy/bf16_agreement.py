"""bf16 against fp32 on the CPU with the built-in model: per fresh phantom, the n-sample
consensus' pixel agreement, the per-sample class maps' agreement, the uncertainty maps' mean
absolute difference, and each precision's Dice against the label. Writes its section of
benchmarks/RESULTS.md unless --no-write.

    python benchmarks/accuracy/bf16_agreement.py [--images 20] [-n 16] [--first-seed S]

bf16 needs AVX-512 bf16 or AMX to be fast. Without it (--allow-slow) the same numbers come
from PyTorch's reference bf16 convolution, far slower: agreement can be measured on any CPU,
speed only on one with the hardware (benchmarks/speed/end_to_end.py times it there).
"""
import argparse
import secrets

import numpy as np
from tqdm import tqdm

import ldseg_rt.backends.precision as precision
from ldseg_rt import Segmenter
from ldseg_rt.bench.report import format_markdown_table
from ldseg_rt.bench.script import parse_args, publish
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.evaluation.metrics import dice_per_class


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:phantom")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--first-seed", type=int, help="default: a fresh random seed >= 10,000,000")
    parser.add_argument("--allow-slow", action="store_true", help="run bf16 on a CPU without bf16 hardware")
    args = parse_args(parser)
    if args.allow_slow:
        precision.cpu_has_bf16 = lambda: True
    first = args.first_seed if args.first_seed is not None else 10_000_000 + secrets.randbelow(10 ** 9)
    fp32 = Segmenter(args.model, backend="torch", device="cpu")
    bf16 = Segmenter(fp32.backend.model, backend="torch", device="cpu", precision="bf16")
    classes = fp32.config.num_classes
    rows = []
    for i in tqdm(range(args.images), desc="fp32 vs bf16"):
        image, label = make_phantom(fp32.config.image_size, first + i, fp32.config.in_channels)
        want, got = (seg.sample(image, n=args.n, seed=first + i) for seg in (fp32, bf16))
        rows.append([(got.mask == want.mask).mean(), (got.samples == want.samples).mean(),
                     np.abs(got.uncertainty - want.uncertainty).mean(),
                     *dice_per_class(want.mask, label, classes), *dice_per_class(got.mask, label, classes)])
    rows = np.array(rows)
    half = (rows.shape[1] - 3) // 2
    measures = [["consensus agreement", f"mean {rows[:, 0].mean():.2%}, min {rows[:, 0].min():.2%}"],
                ["per-sample class maps agreement", f"{rows[:, 1].mean():.2%}"],
                ["uncertainty mean absolute difference", f"{rows[:, 2].mean():.4f}"]]
    dice_fp32, dice_bf16 = rows[:, 3:3 + half].mean(0), rows[:, 3 + half:].mean(0)
    measures += [[f"class-{c + 1} Dice, fp32 / bf16", f"{dice_fp32[c]:.3f} / {dice_bf16[c]:.3f}"] for c in range(half)]
    report = (f"{args.model}: {args.images} phantoms, seeds {first}..{first + args.images - 1}, n={args.n}:\n\n"
              + format_markdown_table(["measure", "result"], measures))
    print(report)
    publish(__file__, report, no_write=args.no_write)


if __name__ == "__main__":
    main()
