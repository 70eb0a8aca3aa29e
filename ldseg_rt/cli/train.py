"""`python -m ldseg_rt train`: train a model of either family (ldseg_rt.training)."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from ..io.atomic import check_writable


def run(args) -> None:
    from ..configs import ROBUST, get_config
    from ..errors import InvalidArgumentError
    from ..models.checkpoint import read_checkpoint, save_inference_checkpoint
    from ..training.dataset import build_dataset
    from ..training.trainer import Trainer, TrainSettings

    if args.from_keras and args.resume:
        raise InvalidArgumentError("--from-keras starts a run and --resume continues one: give one of them")
    for out in (args.out, args.inference_out):
        if out:
            check_writable(out)
    stored = read_checkpoint(args.resume).get("training", {}).get("settings", {}) if args.resume else {}
    given = {k: getattr(args, k) for k in asdict(TrainSettings()) if getattr(args, k) is not None}
    settings = TrainSettings(**{**stored, **given})
    if settings.denoiser_only and not (args.from_keras or args.resume):
        raise InvalidArgumentError("--denoiser-only trains the denoiser on the other networks as given: start "
                                   "from the official ones (--from-keras DIR) or --resume a run")
    if args.resume:
        trainer = Trainer.resume(args.resume, settings, args.device)
    else:
        given_model = None
        if args.from_keras:
            from ..export.keras_weights import load_keras_model

            # Training the denoiser needs the label encoder; the denoiser itself may be what is missing.
            absent_ok = ("denoiser",) if settings.denoiser_only else ("label_encoder", "denoiser")
            given_model = load_keras_model(args.from_keras, args.config, settings.seed, optional=absent_ok)
        trainer = Trainer(get_config(args.config), settings, args.device, init_seed=settings.seed, model=given_model)
    dataset = build_dataset(trainer.model.config, args.data, args.labels, args.axis,
                            getattr(trainer.model, "preprocessing", ROBUST))
    print(f"training {trainer.model.config.name} on {len(dataset)} examples ({args.data}) from step "
          f"{trainer.step} to {settings.steps}, batch {settings.batch_size}, device {trainer.device}")
    trainer.fit(dataset, args.out)
    print(f"wrote {args.out}")
    if args.inference_out:
        print(f"wrote {save_inference_checkpoint(trainer.inference_model(), args.inference_out)}")


def add_parser(sub) -> None:
    from ..training.trainer import TrainSettings

    train = sub.add_parser("train", help="train a model of either family from scratch or resume a run",
                           description="Train all networks end to end, with an EMA of the denoiser; a "
                                       "resumed run continues exactly as an uninterrupted one.")
    train.add_argument("--config", default="small", help="named configuration (ignored with --resume)")
    train.add_argument("--data", default="synthetic",
                       help="'synthetic', or a folder of images (PNG, BMP, TIFF, NPY) or NIfTI volumes")
    train.add_argument("--labels", help="folder of label maps matching --data by name")
    train.add_argument("--axis", type=int, default=2, help="slicing axis for NIfTI volumes")
    train.add_argument("--out", required=True, help="checkpoint written every --checkpoint-every steps and at the end")
    train.add_argument("--resume", help="checkpoint of a run to continue (its settings, unless given here)")
    train.add_argument("--from-keras", metavar="DIR",
                       help="start from the official LDSeg Keras weights in DIR (for --config glas512 or knee3d) and "
                            "prepare images as the official loader does; with --denoiser-only, train a denoiser "
                            "for the published networks (their denoisers were never released)")
    train.add_argument("--inference-out", help="also write the finished model without training state")
    train.add_argument("--device", default="auto")
    for name, value in asdict(TrainSettings()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            train.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    train.set_defaults(run=run)
