"""The ONNX Runtime backend: runs a bundle's graphs; the default on machines without a GPU.

Sessions take the verified graph bytes (not the files, which could change after the check),
with every graph optimisation on and one intra-op thread per core torch would use. Inputs
and outputs are numpy arrays that ONNX Runtime reads and writes in place on the CPU, so IO
binding would save nothing there; with the CUDA provider the arrays cross the bus per call.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from ..bundle import Bundle
from ..configs import config_from_dict
from ..errors import BundleError, DeviceError
from .base import NETWORKS, Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, bundle: Bundle, device: torch.device):
        self.device = device
        self.config = config_from_dict(bundle.manifest["config"], bundle.manifest["family"])
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError("backend 'onnxruntime' on CUDA needs onnxruntime-gpu; this onnxruntime "
                                  f"has {ort.get_available_providers()}: use device='cpu' or backend='torch'")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Memory patterns pre-plan one block per input shape: no faster after the first call,
        # slower on the second, and far more peak RSS (benchmarks/RESULTS.md, "CPU speed").
        options.enable_mem_pattern = False
        self._sessions = {net: _session(bundle, net, options, providers) for net in NETWORKS}
        self._inputs = {net: [i.name for i in s.get_inputs()] for net, s in self._sessions.items()}

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        feed = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in zip(self._inputs[network], arrays)}
        return self._sessions[network].run(None, feed)[0]


def _session(bundle: Bundle, network: str, options, providers) -> ort.InferenceSession:
    """A session for one network; a graph onnxruntime cannot read (damaged, though its hash
    matched) is a BundleError naming the network and its file."""
    try:
        return ort.InferenceSession(bundle.onnx(network), options, providers=providers)
    except (InvalidProtobuf, InvalidGraph, Fail) as e:
        raise BundleError(f"bundle {str(bundle.path)!r}: onnxruntime cannot load the {network} graph "
                          f"{bundle.network(network)['file']}: {e}; export it again") from e
