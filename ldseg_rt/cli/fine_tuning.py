"""`python -m ldseg_rt calibrate-decoder` and `tune-sampler`: the LDSeg fine-tuning stages
(ldseg_rt.training), which share MODEL --out OUT, the training data options, and one flag per
field of the stage's settings."""
from __future__ import annotations

from dataclasses import asdict

from ..io.atomic import check_writable


def _run(args) -> None:
    from ..configs import ROBUST
    from ..models.checkpoint import load_model, save_inference_checkpoint
    from ..training.dataset import build_dataset

    check_writable(args.out)
    settings = args.settings_type(**{name: getattr(args, name) for name in asdict(args.settings_type())})
    model = load_model(args.model)
    dataset = build_dataset(model.config, args.data, args.labels, args.axis,
                            getattr(model, "preprocessing", ROBUST))
    print(f"wrote {save_inference_checkpoint(args.fine_tune(model, dataset, settings, args.out), args.out)}")


def _add_stage(sub, command: str, help: str, settings_type, fine_tune) -> None:
    parser = sub.add_parser(command, help=help, description=help)
    parser.add_argument("model", help="LDSeg checkpoint, bundle or builtin:NAME")
    parser.add_argument("--out", required=True, help="inference checkpoint to write")
    parser.add_argument("--data", default="synthetic", help="as for python -m ldseg_rt train")
    parser.add_argument("--labels", help="folder of label maps matching --data by name")
    parser.add_argument("--axis", type=int, default=2)
    for name, value in asdict(settings_type()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    parser.set_defaults(run=_run, settings_type=settings_type, fine_tune=fine_tune)


def add_parsers(sub) -> None:
    from ..training.decoder_calibration import CalibrationSettings, calibrate_decoder
    from ..training.sampler_tuning import SamplerTuningSettings, tune_sampler

    _add_stage(sub, "calibrate-decoder", "fine-tune an LDSeg decoder on the sampler's own final latents",
               CalibrationSettings, lambda model, dataset, settings, out: calibrate_decoder(model, dataset, settings))
    _add_stage(sub, "tune-sampler", "fine-tune an LDSeg model's image encoder, denoiser and decoder through "
               "the whole differentiable sampler", SamplerTuningSettings, tune_sampler)
