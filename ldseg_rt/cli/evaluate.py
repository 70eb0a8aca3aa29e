"""`python -m ldseg_rt evaluate MODEL`: scores a model on held-out synthetic data of its family."""
from __future__ import annotations

from ..options import SampleOptions
from .options import default


def run_evaluate(args) -> None:
    """Scores a model on held-out synthetic data of its family: Dice of the consensus on
    phantoms (LDSeg), or GED / HM-IoU / NCC against annotation sets (pixel-space family)."""
    from .. import Segmenter

    seg = Segmenter(args.model)
    cfg = seg.config
    if cfg.family == "ambiguous":
        from ..data.ambiguous_lesions import AmbiguousDataset
        from ..evaluation.distribution import evaluate_segmenter
        cases = AmbiguousDataset.evaluation(cfg.image_size, count=args.images, annotators=args.annotators)
        print(f"{args.model}: {args.images} held-out ambiguous cases, N={args.n} samples vs "
              f"M={args.annotators} annotations")
        print(evaluate_segmenter(seg, cases, n=args.n).summary())
        return
    from ..data.phantoms import make_phantom
    from ..evaluation.scoring import evaluate
    examples = (make_phantom(cfg.image_size, args.first_seed + i, cfg.in_channels) for i in range(args.images))
    print(f"{args.model}: {args.images} held-out phantoms, seeds {args.first_seed}.."
          f"{args.first_seed + args.images - 1}, n={args.n}")
    print(evaluate(seg, examples, n=args.n, seed=args.first_seed).summary())


def add_parser(sub) -> None:
    evaluation = sub.add_parser("evaluate", help="score a model on held-out synthetic data of its family")
    evaluation.add_argument("model", help="bundle, checkpoint or builtin:NAME")
    evaluation.add_argument("--images", type=int, default=100)
    evaluation.add_argument("-n", type=int, default=default(SampleOptions, "n"), help="samples per image")
    evaluation.add_argument("--annotators", type=int, default=4, help="annotations per case (pixel-space family)")
    evaluation.add_argument("--first-seed", type=int, default=280_396_367,
                            help="first phantom seed (LDSeg family; training uses seeds below 100,000)")
    evaluation.set_defaults(run=run_evaluate)
