"""PyTorch networks -> ONNX graphs with a dynamic batch axis, and the check that a graph
computes what its module does."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..errors import ExportError
from .chunked_attention import with_chunked_attention
from .cropped_conv_transpose import with_cropped_conv_transposes
from .staged_group_norm import with_staged_group_norms

OPSET = 18
BATCH = "batch"


def network_io(model) -> dict[str, dict]:
    """Per inference network: the module, and the names and shapes (batch first) of its inputs
    and outputs, as the manifest records them. Both families have the same three networks
    (the pixel-space family's encoder is the identity, its decoder a threshold)."""
    cfg = model.config
    image = [BATCH, cfg.in_channels, *cfg.image_shape]
    latent = [BATCH, *cfg.latent_shape]
    condition = [BATCH, *cfg.condition_shape]
    probs = [BATCH, cfg.num_classes, *cfg.image_shape]
    return {
        "image_encoder": {"module": model.image_encoder, "inputs": {"image": image}, "outputs": {"z_i": condition}},
        "denoiser": {"module": model.denoiser, "inputs": {"z_t": latent, "z_i": condition, "t": [BATCH]},
                     "outputs": {"out": latent}},
        "decoder": {"module": model.decoder, "inputs": {"z": latent}, "outputs": {"probs": probs}},
    }


def random_inputs(inputs: dict[str, list], batch: int, rng: np.random.Generator, t_max: float) -> dict:
    """Inputs in the range each network sees: images in [0, 1], latents ~ N(0, 1), t in [0, t_max)."""
    arrays = {}
    for name, shape in inputs.items():
        shape = [batch, *shape[1:]]
        if name == "image":
            arrays[name] = rng.random(shape, dtype=np.float32)
        elif name == "t":
            arrays[name] = (rng.random(shape) * t_max).astype(np.float32)
        else:
            arrays[name] = rng.standard_normal(shape, dtype=np.float32)
    return arrays


def to_onnx(module: torch.nn.Module, inputs: dict[str, list], outputs: dict[str, list],
            t_max: float) -> bytes:
    """Trace the module at batch 2 and return the ONNX graph, batch axis dynamic, checked;
    attention goes in by blocks of queries, transposed convolutions without a crop and large
    GroupNorms with staged statistics (the modules in this folder say why)."""
    example = random_inputs(inputs, 2, np.random.default_rng(0), t_max)
    tensors = tuple(torch.from_numpy(a) for a in example.values())
    module = with_staged_group_norms(with_cropped_conv_transposes(with_chunked_attention(module)), tensors)
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which takes ten
        # times as long for the same graph here; its warnings are about that, not our graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tensors, buffer,
                          input_names=list(inputs), output_names=list(outputs), opset_version=OPSET,
                          dynamic_axes={name: {0: BATCH} for name in [*inputs, *outputs]}, dynamo=False)
    graph = buffer.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(graph), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails onnx.checker: {e}") from e
    return graph


def relative_error(module: torch.nn.Module, graph: bytes, inputs: dict[str, list], batch: int,
                   rng: np.random.Generator, t_max: float) -> float:
    """max |onnxruntime - torch| / max |torch| on fresh random inputs of the given batch."""
    arrays = random_inputs(inputs, batch, rng, t_max)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    got = session.run(None, arrays)[0]
    with torch.inference_mode():
        expected = module.eval()(*(torch.from_numpy(a) for a in arrays.values())).numpy()
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime gives shape {got.shape}, torch {expected.shape}")
    return float(np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))
