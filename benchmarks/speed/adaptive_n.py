"""sample(n="auto") against n=max_n: per tolerance, how many samples it drew, the time it took as a
fraction of the max_n call's, and how far its consensus and uncertainty are from the max_n result's
(the same seed, so the auto draw is the max_n draw's first samples).

    python benchmarks/speed/adaptive_n.py [--engine builtin:phantom] [--images 8] [--max-n 32]
        [--tolerances 0.01 0.005 0.002] [--backend auto] [--folder DIR]

--engine: 'builtin:phantom', a bundle or checkpoint, or a configuration name (random weights, seed 0).
Images: fresh phantoms at the model's size, or the images in --folder (e.g. GlaS). Writes its
section of benchmarks/RESULTS.md unless --no-write.
"""
import argparse
import secrets
import statistics
import time
from pathlib import Path

import numpy as np

from ldseg_rt.bench.report import format_markdown_table, markdown_row
from ldseg_rt.bench.script import parse_args, publish


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def tolerance_row(seg, images, full, tolerance: float, max_n: int) -> list[str]:
    """sample(n="auto") at this tolerance on every image, against the max_n results `full` (result, seconds)."""
    rows = []
    for i, (img, (want, full_time)) in enumerate(zip(images, full)):
        got, t = timed(lambda: seg.sample(img, n="auto", max_n=max_n, tolerance=tolerance, seed=i,
                                          return_samples=False))
        rows.append((got.n, t / full_time, (got.mask == want.mask).mean(),
                     np.abs(got.uncertainty - want.uncertainty).mean(), any("max_n" in w for w in got.warnings)))
    n, ratio, agree, mad, unsettled = map(np.array, zip(*rows))
    return [str(tolerance), f"{n.mean():.1f} ({n.min()}-{n.max()})", f"{np.median(ratio):.2f}",
            f"{agree.mean():.4%} ({agree.min():.4%})", f"{mad.mean():.4f}", f"{unsettled.sum()} of {len(rows)}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="builtin:phantom")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--folder", help="images to use instead of phantoms (the first --images, by name)")
    parser.add_argument("--max-n", type=int, default=32)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.01, 0.005, 0.002])
    parser.add_argument("--backend", default="auto")
    args = parse_args(parser)

    from ldseg_rt import Segmenter
    from ldseg_rt.configs import CONFIGS
    from ldseg_rt.data.phantoms import make_phantom
    from ldseg_rt.io.images import read_image
    seg = (Segmenter.from_config(args.engine, backend=args.backend, device="cpu") if args.engine in CONFIGS else
           Segmenter(args.engine, backend=args.backend, device="cpu"))
    first = 10_000_000 + secrets.randbelow(10 ** 9)
    if args.folder:
        images = [read_image(p) for p in sorted(Path(args.folder).iterdir())[:args.images]]
    else:
        images = [make_phantom(seg.config.image_size, first + i, seg.config.in_channels)[0] for i in range(args.images)]
    seg.sample(images[0], n=4, seed=0)  # warm-up: compiled shapes, caches
    full = [timed(lambda: seg.sample(img, n=args.max_n, seed=i, return_samples=False)) for i, img in enumerate(images)]
    title = (f"{args.engine} on {seg.backend_name} {seg.precision}, {len(images)} images "
             f"({args.folder or f'phantoms, seeds {first}..'}), seed = image index; n={args.max_n}: median "
             f"{statistics.median(t for _, t in full):.3f} s per image")
    header = ["tolerance", "n drawn (mean, min-max)", f"time / n={args.max_n} time (median)",
              f"consensus vs n={args.max_n} (mean, worst)", f"uncertainty MAD vs n={args.max_n}", "unsettled at max_n"]
    print(title, format_markdown_table(header, []), sep="\n")
    rows = []
    for tolerance in args.tolerances:
        rows.append(tolerance_row(seg, images, full, tolerance, args.max_n))
        print(markdown_row(rows[-1]), flush=True)
    publish(__file__, f"{title}:\n\n{format_markdown_table(header, rows)}", no_write=args.no_write)


if __name__ == "__main__":
    main()
