"""A trained model of either family -> a bundle: the manifest, the weights and one checked ONNX graph per
inference network."""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import safetensors.torch
from tqdm.auto import tqdm

from ..bundle import Bundle, package_versions, write_bundle
from ..configs import OFFICIAL, ROBUST
from ..errors import ExportError, InvalidArgumentError
from ..models.checkpoint import TRAINING_ONLY
from ..pipeline.preprocess import INTENSITY, OFFICIAL_INTENSITY, OFFICIAL_RESIZE, RESIZE, ZOOM
from . import bf16_agreement
from .onnx_graphs import BATCH, OPSET, network_io, relative_error, to_onnx

CHECK_BATCHES = (1, 16, 32)
TOLERANCE = 1e-4  # fp32: max |onnxruntime - torch| / max |torch|
PHILOX = "Philox4x32-10 keyed by (seed, sample, step, element)"


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class {c}" for c in range(1, num_classes)]


def export_bundle(model, out, class_names: list[str] | None = None, source: str = "",
                  check_batches=CHECK_BATCHES, tolerance: float = TOLERANCE, overwrite: bool = False,
                  seed: int | None = None, progress: bool = True, bf16_images: int = 0, examples=(),
                  bf16_n: int = 16) -> Bundle:
    """Export, compare every graph with PyTorch on fresh random inputs at each check batch,
    and only then write the bundle, atomically; a graph off by more than `tolerance` raises
    ExportError and writes nothing. bf16_images > 0 (or `examples`, images the model is meant
    for) also measures how often a bf16 run's consensus agrees with fp32's at n=bf16_n, on that
    many random images and the examples, and records it (export/bf16_agreement.py)."""
    cfg = model.config
    class_names = list(class_names or default_class_names(cfg.num_classes))
    if len(class_names) != cfg.num_classes:
        raise InvalidArgumentError(f"{len(class_names)} class names given for a model of "
                                   f"{cfg.num_classes} classes: {class_names}")
    rng = np.random.default_rng(seed)
    t_max = cfg.timesteps if cfg.family == "ldseg" else 1.0  # LDSeg's t is a step index, the other's in [0, 1]
    networks, files = {}, {}
    specs = network_io(model.eval())
    bar = tqdm(total=len(specs) * (1 + len(check_batches)), desc="export", unit="step", disable=not progress)
    for name, spec in specs.items():
        bar.set_postfix_str(f"{name}: ONNX")
        graph = to_onnx(spec["module"], spec["inputs"], spec["outputs"], t_max)
        bar.update()
        errors = {}
        for batch in check_batches:
            bar.set_postfix_str(f"{name}: check batch {batch}")
            errors[str(batch)] = relative_error(spec["module"], graph, spec["inputs"], batch, rng, t_max)
            bar.update()
        worst = max(errors.values(), default=0.0)
        if worst > tolerance:
            raise ExportError(f"{name}: onnxruntime differs from torch by {worst:.2e} relative "
                              f"(tolerance {tolerance:.0e}) at batches {errors}; nothing was written")
        files[f"onnx/{name}.onnx"] = graph
        networks[name] = {"file": f"onnx/{name}.onnx", "opset": OPSET,
                          "inputs": _tensors(spec["inputs"]), "outputs": _tensors(spec["outputs"]),
                          "max_relative_error": errors}
    bar.close()
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    files["weights.safetensors"] = safetensors.torch.save(weights)
    manifest = {"family": cfg.family, "source": source, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config": cfg.to_dict(), "classes": class_names,
                "preprocessing": _preprocessing(cfg, getattr(model, "input_statistics", None),
                                                getattr(model, "slice_axis", None),
                                                getattr(model, "preprocessing", ROBUST)),
                "diffusion": _diffusion(cfg), "networks": networks, "versions": package_versions()}
    if bf16_images or examples:
        with tempfile.TemporaryDirectory(prefix="ldseg_rt-") as folder:  # a bundle OpenVINO can run
            draft = write_bundle(Path(folder) / "draft.ldseg", manifest, files)
            manifest["precision"] = {"bf16": bf16_agreement.measure(model, draft.path, list(examples), bf16_images,
                                                                    bf16_n, seed, progress)}
    return write_bundle(out, manifest, files, overwrite=overwrite)


def _tensors(shapes: dict[str, list]) -> dict:
    return {name: {"shape": shape, "dtype": "float32", "dynamic_axes": {"0": BATCH}} for name, shape in shapes.items()}


def _preprocessing(cfg, input_statistics: dict | None, slice_axis: int | None, mode: str) -> dict:
    official = mode == OFFICIAL  # models imported from the official weights take the official loader's inputs
    volumes = cfg.spatial_dims == 3
    return {"mode": mode, "channels": cfg.in_channels, "size": list(cfg.image_shape),
            "resize": ZOOM if volumes else OFFICIAL_RESIZE if official else RESIZE,
            "intensity": OFFICIAL_INTENSITY if official else INTENSITY,
            "layout": "NCDHW float32" if volumes else "NCHW float32",
            "input_statistics": input_statistics,  # the training images' ranges; None where not recorded
            "slice_axis": slice_axis}  # the voxel axis training slices were cut along; None for 2-D images


def _diffusion(cfg) -> dict:
    if cfg.family == "ambiguous":
        return {"process": "pixel-space VP, continuous t in [0, 1], mask = x > 0", "schedule": "cosine",
                "input_scale": cfg.input_scale, "logsnr_clamp": cfg.logsnr_clamp, "sampler": cfg.sampler,
                "variance": cfg.variance, "steps": cfg.steps, "eta": cfg.eta, "prediction": cfg.prediction,
                "clip": cfg.clip, "renormalize": False, "noise": PHILOX}
    return {"process": "LDSeg latent DDIM", "schedule": "cosine", "timesteps": cfg.timesteps,
            "cosine_s": cfg.cosine_s, "steps": cfg.steps, "eta": cfg.eta, "prediction": "eps",
            "renormalize": True, "noise": PHILOX}

