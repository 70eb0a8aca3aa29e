"""Robust intensity scaling on the built-in model: Dice of the n=16 consensus on held-out
phantoms, clean and corrupted as scanners corrupt images (one hot pixel at 50x the image
maximum; an 8-pixel border of padding at -20), with the percentile window that `prepare`
uses against plain min-max scaling, on the same images and seeds; and what the result says
of images the model cannot read (all zero: refused; pure noise: a warning). Writes its section of
benchmarks/RESULTS.md unless --no-write.

    python benchmarks/accuracy/robust_intensity.py [--images 100] [--first-seed S]
"""
import argparse
from unittest import mock

import numpy as np

from ldseg_rt import Segmenter
from ldseg_rt.bench.report import format_markdown_table, markdown_row
from ldseg_rt.bench.script import parse_args, publish
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import InvalidImageError
from ldseg_rt.evaluation.metrics import dice_per_class
from ldseg_rt.pipeline import preprocess


def hot_pixel(image):
    out = image.copy()
    out[len(out) // 3, len(out) // 3] = 50 * image.max()
    return out


def padded(image):
    out = image.copy()
    out[:8], out[-8:], out[:, :8], out[:, -8:] = -20, -20, -20, -20
    return out


CORRUPTIONS = {"clean": lambda image: image, "hot pixel 50x max": hot_pixel, "8-pixel border at -20": padded}
HEADER = ["image", "scaling", "Dice class 1 / class 2", "mean uncertainty", "images with a warning"]


def min_max(pixels):
    return float(pixels.min()), float(pixels.max())


def scaling_row(seg, phantoms, corruption: str, scaling: str, n: int, first_seed: int) -> list[str]:
    """The corrupted phantoms segmented with this scaling: mean Dice (inside the border, for the
    padded images), mean uncertainty, and how many results carry a warning."""
    window = min_max if scaling == "min-max" else preprocess.intensity_window
    scores, uncertainty, warned = [], [], 0
    with mock.patch.object(preprocess, "intensity_window", window):
        for i, (image, label) in enumerate(phantoms):
            res = seg.sample(CORRUPTIONS[corruption](image), n=n, seed=first_seed + i)
            cut = (slice(8, -8),) * 2 if corruption.startswith("8-pixel") else (slice(None),) * 2
            scores.append(dice_per_class(res.mask[cut], label[cut], 3))
            uncertainty.append(float(res.uncertainty.mean()))
            warned += bool(res.warnings)
    dice = np.mean(scores, axis=0)
    return [corruption, scaling, f"{dice[0]:.3f} / {dice[1]:.3f}", f"{np.mean(uncertainty):.3f}",
            f"{warned} of {len(phantoms)}"]


def unreadable(seg, size: int, n: int, seed: int) -> str:
    """What the result says of an all-zero image and of pure noise."""
    try:
        seg.sample(np.zeros((size, size), np.float32), n=n, seed=0)
        zero = "segmented (not refused)"
    except InvalidImageError as e:
        zero = f"refused ({e})"
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    res = seg.sample(noise, n=n, seed=0)
    return (f"All-zero image: {zero}. Pure noise: {int((res.mask > 0).sum())} foreground pixels, "
            f"warnings: {res.warnings}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=280_396_367)
    parser.add_argument("-n", type=int, default=16)
    args = parse_args(parser)
    seg = Segmenter("builtin:phantom")
    size = seg.config.image_size
    phantoms = [make_phantom(size, args.first_seed + i) for i in range(args.images)]
    title = f"built-in model, {args.images} phantoms from seed {args.first_seed}, n={args.n}"
    print(title, format_markdown_table(HEADER, []), sep="\n")
    rows = []
    for corruption in CORRUPTIONS:
        for scaling in ("percentile window", "min-max"):
            rows.append(scaling_row(seg, phantoms, corruption, scaling, args.n, args.first_seed))
            print(markdown_row(rows[-1]), flush=True)
    verdicts = unreadable(seg, size, args.n, args.first_seed)
    print(verdicts)
    publish(__file__, f"{title}:\n\n{format_markdown_table(HEADER, rows)}\n\n{verdicts}", no_write=args.no_write)

if __name__ == "__main__":
    main()
