"""bf16 against fp32 on the CPU with the built-in model: per fresh phantom, the n-sample
consensus' pixel agreement, the per-sample class maps' agreement, the uncertainty maps' mean
absolute difference, and each precision's Dice against the label.

    .venv/bin/python benchmarks/bf16_agreement.py [--images 20] [-n 16] [--first-seed S]

bf16 needs AVX-512 bf16 or AMX to be fast. Without it (--allow-slow) the same numbers come
from PyTorch's reference bf16 convolution, about 100x slower: agreement can be measured on
any CPU, speed only on one with the hardware (benchmarks/run.py times it there).
"""
import argparse
import secrets

import numpy as np
from tqdm import tqdm

import ldseg_rt.backends.precision as precision
from ldseg_rt import Segmenter
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.evaluation.metrics import dice_per_class


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:phantom")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--first-seed", type=int, help="default: a fresh random seed >= 10,000,000")
    parser.add_argument("--allow-slow", action="store_true", help="run bf16 on a CPU without bf16 hardware")
    args = parser.parse_args()
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
    print(f"{args.model}: {args.images} phantoms, seeds {first}..{first + args.images - 1}, n={args.n}")
    print(f"consensus agreement: mean {rows[:, 0].mean():.4f}, min {rows[:, 0].min():.4f}")
    print(f"per-sample class maps agreement: mean {rows[:, 1].mean():.4f}")
    print(f"uncertainty mean absolute difference: {rows[:, 2].mean():.4f}")
    half = (rows.shape[1] - 3) // 2
    for c in range(half):
        print(f"class {c + 1} Dice: fp32 {rows[:, 3 + c].mean():.3f}, bf16 {rows[:, 3 + half + c].mean():.3f}")


if __name__ == "__main__":
    main()
