"""Trained-model files: a checkpoint records the configuration next to the weights, so
that loading it needs nothing else. Built-in models are checkpoints shipped in
ldseg_rt/builtin/ and named `builtin:NAME`."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from ..bundle import Bundle, is_bundle, load_bundle
from ..configs import ROBUST, config_from_dict
from ..errors import ConfigError, ModelLoadError
from ..io.atomic import replacing
from . import MODELS, build_model

FORMAT = "ldseg_rt.checkpoint"
VERSION = 1
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
TRAINING_ONLY = "label_encoder."  # weights sampling never uses


def save_checkpoint(model: nn.Module, path, **extra) -> Path:
    """Write the model, the statistics of its training images, the axis its training slices were
    cut along (where recorded), how its images are prepared, and `extra` entries (tensors, numbers,
    strings) atomically."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "family": model.config.family,
               "config": model.config.to_dict(), "state_dict": model.state_dict(),
               "input_statistics": getattr(model, "input_statistics", None),
               "slice_axis": getattr(model, "slice_axis", None),
               "preprocessing": getattr(model, "preprocessing", ROBUST), **extra}
    with replacing(path) as tmp, open(tmp, "xb") as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path) -> dict:
    """The checkpoint's raw contents, checked for format and version."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder, but neither a bundle (it has no manifest.json) "
                             "nor a checkpoint file")
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:
        raise ModelLoadError(f"{str(path)!r} is not a readable ldseg_rt checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelLoadError(f"{str(path)!r} is not an ldseg_rt checkpoint")
    if payload.get("version", 0) > VERSION:
        raise ModelLoadError(f"{str(path)!r} has checkpoint version {payload['version']}; this ldseg_rt "
                             f"reads up to version {VERSION}: upgrade ldseg_rt")
    return payload


def _refusal(path: Path, error: pickle.UnpicklingError) -> ModelLoadError:
    """torch's weights-only unpickler refused the file. Its message advises retrying with
    weights_only=False, which could run code from the file, so only the unpickler's own
    reason (the error's context) is passed on."""
    reason = str(error.__context__ or error)
    if "Unsupported global" in reason:
        return ModelLoadError(f"{str(path)!r} holds Python objects beyond tensors, which ldseg_rt refuses to "
                              "unpickle because unpickling them could run code; save only tensors, numbers "
                              "and strings (ldseg_rt.models.checkpoint.save_checkpoint)")
    if "weights_only" in reason:
        reason = "unpickling failed"
    return ModelLoadError(f"{str(path)!r} is not a readable ldseg_rt checkpoint (damaged, or not written by "
                          f"torch.save): {reason}")


def save_inference_checkpoint(model: nn.Module, path) -> Path:
    """Only what sampling needs: no training state, no label encoder (built-in models)."""
    slim = {k: v for k, v in model.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    return save_checkpoint(model, path, state_dict=slim)


def load_checkpoint(path) -> nn.Module:
    payload = read_checkpoint(path)
    model = _with_weights(payload.get("config"), payload.get("family", "ldseg"), payload.get("state_dict"), str(path))
    model.input_statistics = payload.get("input_statistics")
    model.slice_axis = payload.get("slice_axis")
    model.preprocessing = payload.get("preprocessing", ROBUST)  # checkpoints written before modes existed
    return model


def model_from_bundle(bundle: Bundle) -> nn.Module:
    """The PyTorch model of an exported bundle (its verified weights.safetensors)."""
    try:
        weights = safetensors.torch.load(bundle.read("weights.safetensors"))
    except SafetensorError as e:
        raise ModelLoadError(f"{str(bundle.path)!r}: weights.safetensors cannot be read: {e}") from e
    model = _with_weights(bundle.manifest["config"], bundle.manifest["family"], weights, str(bundle.path))
    recorded = bundle.manifest.get("preprocessing", {})
    model.input_statistics = recorded.get("input_statistics")
    model.slice_axis = recorded.get("slice_axis")
    model.preprocessing = recorded.get("mode", ROBUST)  # bundles written before modes existed are ours
    return model


def _with_weights(config: dict | None, family: str, state_dict: dict | None, where: str):
    """A model of the recorded configuration with these weights: all of them, but for the
    label encoder's, which sampling never uses."""
    try:
        model = build_model(config_from_dict(config, family))
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except (ConfigError, RuntimeError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{where!r}: weights do not match the recorded configuration: {e}") from e
    missing = [k for k in missing if not k.startswith(TRAINING_ONLY)]
    if missing or unexpected:
        raise ModelLoadError(f"{where!r}: weights do not match the recorded configuration: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.pt"))


def load_model(engine) -> nn.Module:
    """A model of either family (LDSeg, AmbiguousModel) in memory, a checkpoint path, a bundle folder, or `builtin:NAME`."""
    if isinstance(engine, tuple(MODELS.values())):
        return engine.eval()
    if isinstance(engine, Bundle):
        return model_from_bundle(engine)
    if isinstance(engine, str) and engine.startswith("builtin:"):
        name = engine.split(":", 1)[1]
        if name not in builtin_names():
            raise ModelLoadError(f"no built-in model {name!r}; shipped: {builtin_names() or 'none yet'}")
        return load_checkpoint(BUILTIN_DIR / f"{name}.pt")
    if is_bundle(engine):
        return model_from_bundle(load_bundle(engine))
    if isinstance(engine, (str, os.PathLike)):
        return load_checkpoint(engine)
    raise ModelLoadError(f"cannot load a model from {type(engine).__name__}; pass a model (LDSeg or AmbiguousModel), "
                         "a checkpoint path, a bundle folder or 'builtin:NAME'")
