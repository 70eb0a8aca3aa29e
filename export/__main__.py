"""`python -m ldseg_rt.export CKPT --out NAME.ldseg` (or `--builtin NAME`, `--from-keras DIR --config NAME`
for the official LDSeg Keras weights, `--from-ambdiffseg CKPT` for a checkpoint of the original
AmbDiffSeg code): write a bundle."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..backends import BF16_MIN_AGREEMENT
from ..bundle import SUFFIX
from ..cli import run_command
from ..errors import BundleError, InvalidArgumentError
from ..io.atomic import check_writable
from ..io.cases import find_cases, read_case
from ..io.volume import Volume
from ..models.checkpoint import load_model
from .ambdiffseg_weights import load_ambdiffseg_model
from .exporter import CHECK_BATCHES, TOLERANCE, export_bundle
from .keras_weights import load_keras_model

BF16_IMAGES_2D = 2  # random images whose bf16 agreement an image model's export measures by default


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return batches


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt.export", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint", nargs="?", help="checkpoint written by python -m ldseg_rt train")
    source.add_argument("--builtin", metavar="NAME", help="a model shipped with ldseg_rt (e.g. phantom)")
    source.add_argument("--from-keras", metavar="DIR",
                        help="folder of the official LDSeg Keras weights (imageEncoder.hdf5, labelDecoder.hdf5, "
                             "denoiser.hdf5; labelEncoder.hdf5 optional)")
    source.add_argument("--from-ambdiffseg", metavar="CKPT",
                        help="checkpoint of the original AmbDiffSeg code (its train.py's .pt, or a .safetensors of "
                             "its U-Net state dict), configured from the checkpoint's own config")
    parser.add_argument("--config", metavar="NAME",
                        help="with --from-keras: the configuration the Keras weights are for (e.g. glas512)")
    parser.add_argument("--out", help=f"bundle folder to write (default: the model's name + {SUFFIX})")
    parser.add_argument("--classes", help="comma-separated class names, background first")
    parser.add_argument("--check-batches", type=_batches, default=CHECK_BATCHES,
                        help="batch sizes at which each graph is compared with PyTorch (default "
                             f"{','.join(map(str, CHECK_BATCHES))})")
    parser.add_argument("--bf16-agreement", type=int, metavar="K",
                        help="measure how often a bf16 run's consensus agrees with fp32's on K random images "
                             "(and the --examples) and record it: precision='auto' runs bf16 only where it is at "
                             f"least {100 * BF16_MIN_AGREEMENT:g}%%; 0 skips (default: {BF16_IMAGES_2D} for image models, "
                             "0 for volume models, whose runs take minutes each)")
    parser.add_argument("--examples", nargs="+", metavar="CASE", default=[],
                        help="images (volumes) the model is meant for, measured too (files, folders, DICOM series)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    run_command(_run, args)


def _run(args) -> None:
    if bool(args.config) != bool(args.from_keras):
        raise InvalidArgumentError("--config and --from-keras go together: the configuration names the "
                                   "architecture the Keras weights are for")
    if args.from_keras:
        engine, name = f"keras:{Path(args.from_keras).resolve()}", args.config
    elif args.from_ambdiffseg:
        engine, name = f"ambdiffseg:{Path(args.from_ambdiffseg).resolve()}", Path(args.from_ambdiffseg).stem
    else:
        engine = f"builtin:{args.builtin}" if args.builtin else args.checkpoint
        name = args.builtin or Path(args.checkpoint).stem
    out = check_writable(args.out or f"{name}{SUFFIX}")
    if out.exists() and not args.force:  # refused before the export's minutes of work
        raise BundleError(f"{str(out)!r} already exists; choose another name or pass --force to replace it")
    if args.from_keras:
        model = load_keras_model(args.from_keras, args.config)
    elif args.from_ambdiffseg:
        model = load_ambdiffseg_model(args.from_ambdiffseg)
    else:
        model = load_model(engine)
    random_images = args.bf16_agreement
    if random_images is None:
        random_images = BF16_IMAGES_2D if model.config.spatial_dims == 2 else 0
    if random_images < 0:
        raise InvalidArgumentError(f"--bf16-agreement must be >= 0, got {random_images}")
    examples = [_pixels(read_case(case)) for case in find_cases(args.examples)]
    print(f"exporting {engine} ({model.config.name} configuration) to {out}")
    bundle = export_bundle(model, out, args.classes.split(",") if args.classes else None, source=str(engine),
                           check_batches=args.check_batches, overwrite=args.force, bf16_images=random_images,
                           examples=examples)
    print(f"wrote {bundle.path}:")
    for name in bundle.manifest["files"]:
        print(f"  {name:<28}{len(bundle.read(name)) / 1e6:8.2f} MB")
    for name, net in bundle.manifest["networks"].items():
        errors = ", ".join(f"batch {b} {e:.1e}" for b, e in net["max_relative_error"].items())
        print(f"  {name}: onnxruntime vs torch, max relative error {errors} (tolerance {TOLERANCE:.0e})")
    bf16 = bundle.manifest.get("precision", {}).get("bf16")
    print(f"  bf16: consensus agrees with fp32 on {bf16['agreement']:.4%} of pixels ({bf16['method']})" if bf16 else
          "  bf16: agreement not measured (--bf16-agreement K): precision='auto' runs it in fp32")


def _pixels(case) -> np.ndarray:
    return case.array if isinstance(case, Volume) else case


if __name__ == "__main__":
    main()
