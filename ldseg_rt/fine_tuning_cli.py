"""The command line the LDSeg fine-tuning stages share (decoder calibration, sampler tuning):
MODEL --out OUT, the training data options, and one flag per field of the stage's settings."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from .checkpoint import load_model, save_inference_checkpoint
from .errors import InvalidArgumentError
from .training_data import build_dataset


def check_settings(settings, positive=(), non_negative=()) -> None:
    """Raises InvalidArgumentError for the first named field out of range."""
    for names, bad, wanted in ((positive, lambda v: v <= 0, "positive"), (non_negative, lambda v: v < 0, ">= 0")):
        for name in names:
            if bad(getattr(settings, name)):
                raise InvalidArgumentError(f"{name} must be {wanted}, got {getattr(settings, name)!r}")


def run(prog: str, doc: str, settings_type, fine_tune, argv=None) -> None:
    """Parses argv, fine-tunes the model with `fine_tune(model, dataset, settings, out)` and
    writes the returned model as an inference checkpoint at --out."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("model", help="LDSeg checkpoint, bundle or builtin:NAME")
    parser.add_argument("--out", required=True, help="inference checkpoint to write")
    parser.add_argument("--data", default="synthetic", help="as for python -m ldseg_rt.train")
    parser.add_argument("--labels", help="folder of label maps matching --data by name")
    parser.add_argument("--axis", type=int, default=2)
    defaults = asdict(settings_type())
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    settings = settings_type(**{name: getattr(args, name) for name in defaults})
    model = load_model(args.model)
    dataset = build_dataset(model.config, args.data, args.labels, args.axis)
    print(f"wrote {save_inference_checkpoint(fine_tune(model, dataset, settings, args.out), args.out)}")
