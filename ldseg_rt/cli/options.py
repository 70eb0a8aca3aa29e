"""The flags every command shares for ldseg_rt.options, with their defaults read from the options
classes (never restated), and the options built from what was given: a flag left out takes the
class's default."""
from __future__ import annotations

import dataclasses

from ..options import EngineOptions, SampleOptions, SegmentOptions, VolumeOptions


def default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def add_engine_arguments(parser) -> None:
    parser.add_argument("--backend", help=f"auto, torch, onnxruntime, openvino, tensorrt "
                                          f"(default {default(EngineOptions, 'backend')})")
    parser.add_argument("--precision", help=f"{default(EngineOptions, 'precision')} (default) or one the "
                                            "backend offers: fp32, fp16, bf16")


def add_sample_arguments(parser, *, what: str = "image") -> None:
    parser.add_argument("-n", type=int, help=f"samples per {what} (default {default(SampleOptions, 'n')})")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")


def add_volume_arguments(parser) -> None:
    parser.add_argument("--axis", type=int, help="slicing axis of volumes through a 2-D model (default: the "
                                                 "model's training axis, else the through-plane axis)")
    parser.add_argument("--max-batch", type=int, help=f"slices per batched pass, which bounds memory "
                                                      f"(default {default(VolumeOptions, 'max_batch')})")


def options_from(cls, args, **settings):
    """An options object of `cls` from the parsed flags named as its fields (those given), and
    `settings` on top."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    return cls.of(**{**given, **settings})


def engine_options(args) -> EngineOptions:
    return options_from(EngineOptions, args)


def segment_options(args, **settings) -> SegmentOptions:
    return options_from(SegmentOptions, args, **settings)
