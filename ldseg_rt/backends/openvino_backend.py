"""The OpenVINO backend: a bundle's verified ONNX graphs compiled by OpenVINO for the CPU.

OpenVINO compiles a graph for fixed input shapes, which is much of its speed on a CPU; a
sample() call uses only a few (one batch of images, n samples per denoiser call, a decode batch
and its remainder), so each (network, input shapes) is compiled once, on first use, and kept.
At most MAX_COMPILED are kept (least recently used dropped): a service asked for every n would
otherwise hold a compiled model per n. The precision is always set, never left to OpenVINO: its default on a CPU with AVX-512 bf16 or
AMX is bf16, so "fp32" asks for f32 inference explicitly, and "bf16" is refused where the CPU
cannot multiply bf16. Threads: as many as torch uses, the setting every backend follows.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..bundle import Bundle
from ..configs import config_from_dict
from ..errors import BackendError, BundleError, DeviceError
from .base import NETWORKS, Backend
from .precision import cpu_has_bf16

INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}
MAX_COMPILED = 24


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str = "fp32"):
        try:
            import openvino
        except ImportError as e:
            raise BackendError("backend 'openvino' needs the openvino package (pip install "
                               "'ldseg_rt[openvino]'); without it use backend 'onnxruntime'") from e
        if device.type != "cpu":
            raise DeviceError(f"backend 'openvino' runs on the CPU, not {device}; on a GPU use 'tensorrt' or 'torch'")
        if precision == "bf16" and not cpu_has_bf16():
            raise BackendError("precision 'bf16' with backend 'openvino' needs AVX-512 bf16 or AMX, which this CPU "
                               "lacks; use 'fp32'")
        self.device, self.precision = device, precision
        self.config = config_from_dict(bundle.manifest["config"], bundle.manifest["family"])
        self._core = openvino.Core()
        self._graphs = {net: _read(self._core, bundle, net) for net in NETWORKS}
        # Threads not pinned to cores: a pinned thread cannot move off a core another program is
        # busy on (section speed/busy_machine of benchmarks/RESULTS.md).
        self._settings = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
                          "INFERENCE_NUM_THREADS": torch.get_num_threads(), "ENABLE_CPU_PINNING": False}
        self._compiled: OrderedDict = OrderedDict()
        self._compiling = threading.Lock()  # one compilation per key, even when threads share the backend

    def compiled(self, network: str, shapes: tuple) -> object:
        """The network compiled for these input shapes (compiled on first use, then kept)."""
        key = (network, shapes)
        with self._compiling:
            if key not in self._compiled:
                graph = self._graphs[network].clone()
                graph.reshape({port.get_any_name(): list(shape) for port, shape in zip(graph.inputs, shapes)})
                self._compiled[key] = self._core.compile_model(graph, "CPU", self._settings)
                if len(self._compiled) > MAX_COMPILED:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(key)
            return self._compiled[key]

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        request = self.compiled(network, tuple(a.shape for a in arrays)).create_infer_request()
        request.infer(arrays)  # a request of its own per call: compiled models are shared between threads
        return request.get_output_tensor(0).data.copy()


def _read(core, bundle: Bundle, network: str):
    """One network's verified graph bytes as an OpenVINO model; a graph OpenVINO cannot read
    (damaged, though its hash matched) is a BundleError naming the network and its file."""
    try:
        return core.read_model(io.BytesIO(bundle.onnx(network)))
    except RuntimeError as e:
        raise BundleError(f"bundle {str(bundle.path)!r}: openvino cannot load the {network} graph "
                          f"{bundle.network(network)['file']}: {e}; export it again") from e
