"""Robust intensity scaling on the built-in model: Dice of the n=16 consensus on held-out
phantoms, clean and corrupted as scanners corrupt images (one hot pixel at 50x the image
maximum; an 8-pixel border of padding at -20), with the percentile window that `prepare`
uses against plain min-max scaling, on the same images and seeds; and what the result says
of images the model cannot read (all zero: refused; pure noise: a warning).

    .venv/bin/python benchmarks/robust_intensity.py [--images 100] [--first-seed S]
"""
import argparse
from unittest import mock

import numpy as np

from ldseg_rt import Segmenter
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


def min_max(pixels):
    return float(pixels.min()), float(pixels.max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=280_396_367)
    parser.add_argument("-n", type=int, default=16)
    args = parser.parse_args()
    seg = Segmenter("builtin:phantom")
    size = seg.config.image_size
    phantoms = [make_phantom(size, args.first_seed + i) for i in range(args.images)]
    print(f"built-in model, {args.images} phantoms from seed {args.first_seed}, n={args.n}: mean Dice class 1 / class 2, "
          "mean uncertainty, images with a warning")
    for name, corrupt in CORRUPTIONS.items():
        for scaling in ("percentile window", "min-max"):
            patch = mock.patch.object(preprocess, "intensity_window", min_max) if scaling == "min-max" else \
                mock.patch.object(preprocess, "intensity_window", preprocess.intensity_window)
            with patch:
                scores, unc, warned = [], [], 0
                for i, (image, label) in enumerate(phantoms):
                    res = seg.sample(corrupt(image), n=args.n, seed=args.first_seed + i)
                    cut = (slice(8, -8),) * 2 if name.startswith("8-pixel") else (slice(None),) * 2
                    scores.append(dice_per_class(res.mask[cut], label[cut], 3))
                    unc.append(float(res.uncertainty.mean()))
                    warned += bool(res.warnings)
            d = np.mean(scores, axis=0)
            print(f"  {name:<22} {scaling:<18} {d[0]:.3f} / {d[1]:.3f}   uncertainty {np.mean(unc):.3f}   "
                  f"warned {warned}/{len(phantoms)}")
    try:
        seg.sample(np.zeros((size, size), np.float32), n=args.n, seed=0)
        print("  all-zero image: segmented (not refused)")
    except InvalidImageError as e:
        print(f"  all-zero image: refused ({e})")
    noise = np.random.default_rng(args.first_seed).random((size, size)).astype(np.float32)
    res = seg.sample(noise, n=args.n, seed=0)
    print(f"  pure noise: {int((res.mask > 0).sum())} foreground pixels, warnings: {res.warnings}")


if __name__ == "__main__":
    main()
