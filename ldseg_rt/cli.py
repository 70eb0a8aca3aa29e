"""Command line: `python -m ldseg_rt demo`, `python -m ldseg_rt evaluate MODEL` (held-out
synthetic data of the model's family), `python -m ldseg_rt info NAME.ldseg` and
`python -m ldseg_rt bench` (the end-to-end benchmark, ldseg_rt.bench)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
EXAMPLE = DATA_DIR / "example.png"
EXAMPLE_LABEL = DATA_DIR / "example_label.png"


def run_demo(args) -> None:
    from . import Segmenter
    from .figure import save_figure
    from .io import read_image, read_label
    from .metrics import dice_per_class

    seg = Segmenter(args.model)
    image = read_image(args.image)
    print(f"model {args.model} ({seg.config.name} configuration), backend {seg.backend_name}, "
          f"image {args.image} {image.shape}")
    res = seg.sample(image, n=args.n, seed=args.seed)
    print(f"{args.n} samples, seed {res.seed}; time per stage:")
    for stage, ms in res.timings.items():
        print(f"  {stage:<12}{ms:9.1f} ms")
    label = read_label(EXAMPLE_LABEL) if Path(args.image) == EXAMPLE else None
    if label is not None:
        scores = dice_per_class(res.mask, label, seg.config.num_classes)
        print("consensus Dice against the example's label: " +
              ", ".join(f"class {c + 1} {d:.3f}" for c, d in enumerate(scores)))
    figure = save_figure(image, res, args.out, title=f"{args.model}, n={args.n}", label=label)
    print(f"mean uncertainty {float(res.uncertainty.mean()):.3f}; figure written to {figure}")


def _shapes(tensors: dict) -> str:
    return ", ".join(f"{name} {list(t['shape'])}" for name, t in tensors.items())


def _sampling(diffusion: dict) -> str:
    if "input_scale" in diffusion:  # the pixel-space family
        return (f"{diffusion['steps']} {diffusion['sampler'].upper()} steps ({diffusion['variance']} variance), "
                f"{diffusion['schedule']} schedule with input scale {diffusion['input_scale']}, "
                f"x clipped to +-{diffusion['clip']}")
    return (f"{diffusion['steps']} DDIM steps, eta {diffusion['eta']}, {diffusion['schedule']} schedule over "
            f"{diffusion['timesteps']} timesteps")


def describe_bundle(bundle) -> str:
    """The manifest in human terms, and what backend="auto" would run it with here."""
    from .backends import PRECISIONS, choose_backend, resolve_device

    m, cfg = bundle.manifest, bundle.manifest["config"]
    diffusion, size = m["diffusion"], cfg["image_size"]
    device = resolve_device("auto")
    backend = choose_backend(bundle, device)
    lines = [f"bundle {bundle.path} (format {m['format_version']}, family {m['family']}), "
             f"exported {m.get('created', '?')} from {m.get('source') or '?'}",
             f"model: {cfg['name']} configuration, {size}x{size} input with {cfg['in_channels']} channel(s), "
             f"{len(m['classes'])} classes: {', '.join(m['classes'])}",
             f"sampling: {_sampling(diffusion)}, {diffusion['prediction']} prediction, state "
             f"{'x'.join(str(d) for d in m['networks']['denoiser']['inputs']['z_t']['shape'][1:])}",
             f"preprocessing: {m['preprocessing']['intensity']}; {m['preprocessing']['resize']}",
             "networks (ONNX, dynamic batch):"]
    for name, net in m["networks"].items():
        worst = max(net["max_relative_error"].values(), default=float("nan"))
        lines.append(f"  {name:<14}{len(bundle.read(net['file'])) / 1e6:6.2f} MB  {_shapes(net['inputs'])} -> "
                     f"{_shapes(net['outputs'])}  (vs torch at export: {worst:.1e} relative)")
    engines = sorted(p.name for p in bundle.engines_dir.iterdir()) if bundle.engines_dir.is_dir() else []
    lines += [f"files: {len(m['files'])}, sha256 verified",
              "made with: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"TensorRT engines cached: {', '.join(engines) or 'none'}",
              f"here, backend='auto' runs it with {backend} ({PRECISIONS[backend][0]}) on {device}"]
    return "\n".join(lines)


def run_evaluate(args) -> None:
    """Scores a model on held-out synthetic data of its family: Dice of the consensus on
    phantoms (LDSeg), or GED / HM-IoU / NCC against annotation sets (pixel-space family)."""
    from . import Segmenter
    from .errors import LdsegError

    try:
        seg = Segmenter(args.model)
    except LdsegError as e:
        sys.exit(f"error: {e}")
    cfg = seg.config
    if cfg.family == "ambiguous":
        from .distribution_evaluation import evaluate_segmenter
        from .synthetic_ambiguous import AmbiguousDataset
        cases = AmbiguousDataset.evaluation(cfg.image_size, count=args.images, annotators=args.annotators)
        print(f"{args.model}: {args.images} held-out ambiguous cases, N={args.n} samples vs "
              f"M={args.annotators} annotations")
        print(evaluate_segmenter(seg, cases, n=args.n).summary())
        return
    from .evaluation import evaluate
    from .synthetic import make_phantom
    examples = (make_phantom(cfg.image_size, args.first_seed + i, cfg.in_channels) for i in range(args.images))
    print(f"{args.model}: {args.images} held-out phantoms, seeds {args.first_seed}.."
          f"{args.first_seed + args.images - 1}, n={args.n}")
    print(evaluate(seg, examples, n=args.n, seed=args.first_seed).summary())


def run_info(args) -> None:
    from .bundle import load_bundle
    from .errors import LdsegError

    try:
        print(describe_bundle(load_bundle(args.bundle)))
    except LdsegError as e:
        sys.exit(f"error: {e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="segment an image n times, print timings, write a figure")
    demo.add_argument("--model", default="builtin:phantom", help="checkpoint path or builtin:NAME")
    demo.add_argument("--image", default=str(EXAMPLE), help="image file (PNG, BMP, TIFF, NPY)")
    demo.add_argument("-n", type=int, default=16, help="number of samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="ldseg_demo.png", help="where to write the figure (PNG)")
    demo.set_defaults(run=run_demo)
    evaluation = sub.add_parser("evaluate", help="score a model on held-out synthetic data of its family")
    evaluation.add_argument("model", help="bundle, checkpoint or builtin:NAME")
    evaluation.add_argument("--images", type=int, default=100)
    evaluation.add_argument("-n", type=int, default=16, help="samples per image")
    evaluation.add_argument("--annotators", type=int, default=4, help="annotations per case (pixel-space family)")
    evaluation.add_argument("--first-seed", type=int, default=280_396_367,
                            help="first phantom seed (LDSeg family; training uses seeds below 100,000)")
    evaluation.set_defaults(run=run_evaluate)
    info = sub.add_parser("info", help="describe an exported bundle (NAME.ldseg) after verifying it")
    info.add_argument("bundle")
    info.set_defaults(run=run_info)
    from . import bench as bench_harness
    bench = bench_harness.add_arguments(sub.add_parser(
        "bench", help="benchmark sample() per configuration, n, backend and precision against eager PyTorch; "
                      "print the table, rewrite benchmarks/RESULTS.md's bench section and results.json"))
    bench.set_defaults(run=bench_harness.run)
    args = parser.parse_args(argv)
    args.run(args)
