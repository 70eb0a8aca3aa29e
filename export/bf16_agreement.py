"""How often a bf16 run's consensus agrees with fp32's: measured at export, recorded in the manifest
under "precision", read by precision="auto" (ldseg_rt.backends.choose_precision: bf16 only on a CPU
that multiplies bf16 and only when the recorded agreement is at least BF16_MIN_AGREEMENT).

The measurement: the same images, seed and n in both precisions; the agreement is the fraction of
pixels (voxels) whose consensus class is the same, over all images. The images are random ones
(smoothed noise, a fresh seed each export) and the model's own examples where the exporter has some.
Where this CPU multiplies bf16 and OpenVINO is installed, the bf16 run is OpenVINO's on the bundle's
graphs (what precision="auto" would run); elsewhere it is an emulation that gives the same number on
any CPU: an fp32 copy of the model whose convolutions and linear layers take bf16-rounded weights and
inputs and give bf16-rounded outputs (bf16 storage, fp32 accumulation, as oneDNN's bf16 kernels do).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

ROUNDED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
EMULATED = "emulated: bf16-rounded weights, inputs and outputs of every convolution and linear layer"


def _to_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def emulated_bf16(model: nn.Module) -> nn.Module:
    """A copy of `model` that computes like a bf16 engine (the caller's model is not changed)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ROUNDED):
            with torch.no_grad():
                module.weight.copy_(_to_bf16(module.weight))
            module.register_forward_pre_hook(lambda _, inputs: tuple(_to_bf16(x) for x in inputs))
            module.register_forward_hook(lambda _, __, output: _to_bf16(output))
    return model


def random_images(config, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Smoothed noise in [0, 255] of the model's input size, in the form Segmenter.sample takes:
    (H, W[, C]) images, (X, Y, Z) volumes."""
    shape = tuple(config.image_shape)
    if config.spatial_dims == 3:
        shape = shape[::-1]
    elif config.in_channels > 1:
        shape += (config.in_channels,)
    sigma = [max(s / 32, 1.0) for s in shape[:config.spatial_dims]] + [0.0] * (len(shape) - config.spatial_dims)
    images = []
    for _ in range(count):
        smooth = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        images.append((255 * (smooth - smooth.min()) / max(np.ptp(smooth), 1e-12)).astype(np.float32))
    return images


def consensus_agreement(fp32, bf16, images: list, n: int, seed: int, progress: bool = True) -> list[float]:
    """Per image, the fraction of pixels whose consensus class two Segmenters agree on."""
    return [float((fp32.sample(image, n=n, seed=seed, return_samples=False).mask ==
                   bf16.sample(image, n=n, seed=seed, return_samples=False).mask).mean())
            for image in tqdm(images, desc="bf16 agreement", unit="image", disable=not progress)]


def measure(model, bundle_path, examples: list, random_count: int, n: int, seed: int | None,
            progress: bool = True) -> dict:
    """The manifest's record: measured on `random_count` random images and the `examples`; with
    OpenVINO on the bundle at `bundle_path` where this CPU multiplies bf16, else emulated."""
    from ..backends import openvino_available
    from ..backends.precision import cpu_has_bf16
    from ..bench.machine import cpu_model
    from ..segmenter import Segmenter

    rng = np.random.default_rng(seed)
    seed = int(rng.integers(2 ** 63))
    images = random_images(model.config, random_count, rng) + list(examples)
    if cpu_has_bf16() and openvino_available():
        fp32, bf16 = (Segmenter(bundle_path, backend="openvino", device="cpu", precision=p) for p in ("fp32", "bf16"))
        method = f"openvino bf16 on {cpu_model()}"
    else:
        fp32 = Segmenter(model, backend="torch", device="cpu", precision="fp32")
        bf16 = Segmenter(emulated_bf16(model), backend="torch", device="cpu", precision="fp32")
        method = EMULATED
    agreements = consensus_agreement(fp32, bf16, images, n, seed, progress)
    return {"agreement": float(np.mean(agreements)), "worst_image": min(agreements), "random_images": random_count,
            "example_images": len(examples), "n": n, "seed": seed, "method": method}
