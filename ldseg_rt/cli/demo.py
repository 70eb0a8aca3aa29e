"""`python -m ldseg_rt demo`: the built-in model segments a bundled example image n times,
prints the time per stage and the Dice against the example's label, and writes a figure."""
from __future__ import annotations

from ..options import SampleOptions
from .options import default

from pathlib import Path

from ..io.atomic import check_writable

EXAMPLES = Path(__file__).resolve().parent.parent / "data"
EXAMPLE = EXAMPLES / "example.png"
EXAMPLE_LABEL = EXAMPLES / "example_label.png"


def run(args) -> None:
    from .. import Segmenter
    from ..evaluation.figure import save_figure
    from ..evaluation.metrics import dice_per_class
    from ..io.images import read_image, read_label

    check_writable(args.out)
    image = read_image(args.image)  # a wrong path is reported before the model is loaded
    seg = Segmenter(args.model)
    print(f"model {args.model} ({seg.config.name} configuration), backend {seg.backend_name}, "
          f"image {args.image} {image.shape}")
    res = seg.sample(image, n=args.n, seed=args.seed)
    print(f"{args.n} samples, seed {res.seed}; time per stage:")
    for stage, ms in res.timings.items():
        print(f"  {stage:<12}{ms:9.1f} ms")
    for warning in res.warnings:
        print(f"warning: {warning}")
    label = read_label(EXAMPLE_LABEL) if Path(args.image).resolve() == EXAMPLE else None
    if label is not None:
        scores = dice_per_class(res.mask, label, seg.config.num_classes)
        print("consensus Dice against the example's label: " +
              ", ".join(f"class {c + 1} {d:.3f}" for c, d in enumerate(scores)))
    figure = save_figure(image, res, args.out, title=f"{args.model}, n={args.n}", label=label)
    print(f"mean uncertainty {float(res.uncertainty.mean()):.3f}; figure written to {figure}")


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="segment an image n times, print timings, write a figure")
    demo.add_argument("--model", default="builtin:phantom", help="bundle, checkpoint path or builtin:NAME")
    demo.add_argument("--image", default=str(EXAMPLE), help="image file (PNG, BMP, TIFF, NPY)")
    demo.add_argument("-n", type=int, default=default(SampleOptions, "n"), help="number of samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="ldseg_demo.png", help="where to write the figure (PNG)")
    demo.set_defaults(run=run)
