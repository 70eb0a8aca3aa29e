"""The TensorRT backend: runs a bundle's graphs as TensorRT engines on an NVIDIA GPU.

Engines are built on first use, for this GPU, and cached in the bundle (tensorrt_engines);
a call whose batch is past its engine's profile rebuilds that engine with a wider one.
Every input shape gets its own execution context with static device buffers. The first call
at a shape enqueues directly (the warm-up TensorRT needs before a capture); the second
captures the enqueue in a CUDA graph, which later calls replay after copying their inputs in,
so a diffusion step costs one graph launch, not one launch per kernel. A graph freezes its
context's shapes and addresses, hence a context per shape; the contexts of one engine share
one scratch allocation, as they run one at a time on one stream.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..bundle import Bundle
from ..configs import config_from_dict
from ..errors import BackendError, DeviceError
from .base import Backend
from .tensorrt_engines import EngineCache, GpuIdentity, Profile, import_tensorrt, network_profiles, tensorrt_logger

log = logging.getLogger(__name__)

MAX_SHAPES = 8  # per network: input shapes kept with their context, buffers and graph


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str, n: int = 16, max_images: int = 4):
        """n, max_images: the samples per image and images per call the first engines are
        built for; larger calls rebuild."""
        if device.type != "cuda":
            raise DeviceError(f"backend 'tensorrt' runs on an NVIDIA GPU, not on {str(device)!r}: use "
                              "device='cuda', or backend='onnxruntime' or 'torch' on the CPU")
        if precision not in ("fp16", "fp32"):
            raise BackendError(f"precision {precision!r} is not available with backend 'tensorrt'; "
                               "use 'fp16' or 'fp32'")
        self.trt = import_tensorrt()
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        self.precision = precision
        self.config = config_from_dict(bundle.manifest["config"], bundle.manifest["family"])
        self._bundle = bundle
        self._profiles = network_profiles(n, max_images)
        self._cache = EngineCache(self.trt, bundle, GpuIdentity.of(self.device), precision)
        self._runtime = self.trt.Runtime(tensorrt_logger(self.trt))
        self._stream = torch.cuda.Stream(self.device)
        self._engines: dict[str, _Engine] = {}
        self._lock = threading.Lock()  # the contexts and buffers are shared state

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        if network not in self._profiles:
            raise BackendError(f"unknown network {network!r}; the bundle's are {list(self._profiles)}")
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        batch = arrays[0].shape[0] if arrays[0].ndim else 0
        if batch < 1 or any(a.ndim == 0 or a.shape[0] != batch for a in arrays):
            raise BackendError(f"{network}: the inputs need one batch size >= 1, got shapes "
                               f"{[a.shape for a in arrays]}")
        # Buffers made under a caller's inference_mode could not be written outside it later.
        with self._lock, torch.inference_mode(False), torch.cuda.device(self.device), \
                torch.cuda.stream(self._stream):
            engine = self._engine(network, batch)
            return engine.shape(tuple(a.shape for a in arrays)).run(arrays, self._stream)

    def _engine(self, network: str, batch: int) -> _Engine:
        """The network's engine, (re)built when `batch` is outside its profile."""
        engine = self._engines.get(network)
        if engine is not None and engine.profile.contains(batch):
            return engine
        profile = engine.profile.widened(batch) if engine is not None else self._profiles[network]
        if not profile.contains(batch):
            profile = profile.widened(batch)
        if engine is not None:  # free the old engine's memory for TensorRT before the new one loads
            del self._engines[network], engine
            torch.cuda.empty_cache()
        self._engines[network] = self._load(network, profile)
        return self._engines[network]

    def _load(self, network: str, profile: Profile) -> _Engine:
        cached = self._cache.plan(network, profile)
        engine = self._deserialize(cached.plan)
        if engine is None and not cached.built:
            cached = self._cache.plan(network, profile, rebuild="could not be loaded by TensorRT "
                                      f"{self.trt.__version__} (damaged or incompatible; see its messages above)")
            engine = self._deserialize(cached.plan)
        if engine is None:
            raise BackendError(f"TensorRT {self.trt.__version__} cannot load the engine it has just built for "
                               f"{network} (see its messages above); use backend='torch'")
        return _Engine(self.trt, network, engine, self._bundle.network(network), cached.profile, self.device)

    def _deserialize(self, plan: bytes):
        """The engine, or None where TensorRT rejects the plan (it returns None or raises, by version)."""
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except (RuntimeError, TypeError, ValueError):
            return None


class _Engine:
    """A deserialised engine, its batch profile, and one _Shape per input shape seen."""

    def __init__(self, trt, network: str, engine, entry: dict, profile: Profile, device: torch.device):
        self.trt, self.network, self.engine, self.profile, self.device = trt, network, engine, profile, device
        self.inputs, self.outputs = list(entry["inputs"]), list(entry["outputs"])
        self.dims = {name: tuple(spec["shape"][1:]) for name, spec in entry["inputs"].items()}
        io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = {n for n in io if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outs = set(io) - ins
        if (ins, outs) != (set(self.inputs), set(self.outputs)):
            raise BackendError(f"the {network} engine has inputs {sorted(ins)} and outputs {sorted(outs)}, "
                               f"the manifest {self.inputs} and {self.outputs}: export the bundle again")
        wrong = {n: engine.get_tensor_dtype(n) for n in io if engine.get_tensor_dtype(n) != trt.float32}
        if wrong:
            raise BackendError(f"the {network} engine's tensors {wrong} are not float32, which this backend feeds")
        # Contexts share one scratch block where TensorRT lets the caller provide it (10.1+).
        size = getattr(engine, "device_memory_size_v2", 0)
        shared = size > 0 and hasattr(trt, "ExecutionContextAllocationStrategy")
        self.scratch = torch.empty(size, dtype=torch.uint8, device=device) if shared else None
        self.shapes: OrderedDict[tuple, _Shape] = OrderedDict()

    def context(self):
        if self.scratch is None:
            context = self.engine.create_execution_context()
        else:
            strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
            context = self.engine.create_execution_context(strategy)
            if context is not None:
                context.set_device_memory(self.scratch.data_ptr(), self.scratch.numel())
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.network} "
                               "(out of GPU memory?)")
        return context

    def shape(self, shapes: tuple) -> _Shape:
        """The context for these input shapes, the least recently used one dropped past MAX_SHAPES."""
        entry = self.shapes.pop(shapes, None) or _Shape(self, shapes)
        self.shapes[shapes] = entry
        if len(self.shapes) > MAX_SHAPES:
            self.shapes.popitem(last=False)
        return entry


class _Shape:
    """One input shape's execution context, static buffers and, from its second call, CUDA graph."""

    def __init__(self, engine: _Engine, shapes: tuple):
        self.network = engine.network
        for name, shape in zip(engine.inputs, shapes):
            if tuple(shape[1:]) != engine.dims[name]:
                raise BackendError(f"{self.network}: input {name!r} has shape {shape}, the graph takes "
                                   f"(batch, {', '.join(map(str, engine.dims[name]))})")
        self.context = engine.context()
        for name, shape in zip(engine.inputs, shapes):
            if not self.context.set_input_shape(name, shape):
                raise BackendError(f"TensorRT rejects shape {shape} for {self.network} input {name!r}")
        self.inputs = [torch.empty(shape, dtype=torch.float32, device=engine.device) for shape in shapes]
        self.outputs = []
        for name in engine.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"TensorRT cannot tell the shape of {self.network} output {name!r} ({shape})")
            self.outputs.append(torch.empty(shape, dtype=torch.float32, device=engine.device))
        for name, tensor in zip(engine.inputs + engine.outputs, self.inputs + self.outputs):
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capturable = True

    def run(self, arrays: list[np.ndarray], stream: torch.cuda.Stream) -> np.ndarray:
        """Runs on `stream`, the current stream; returns the (first) output as numpy."""
        for buffer, array in zip(self.inputs, arrays):
            buffer.copy_(torch.from_numpy(array))
        if self.graph is None and self.calls and self.capturable:
            self._capture(stream)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._enqueue(stream)
        self.calls += 1
        return self.outputs[0].cpu().numpy()  # waits for the stream

    def _enqueue(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run {self.network} (see its messages above)")

    def _capture(self, stream: torch.cuda.Stream) -> None:
        """Record the enqueue as a CUDA graph; where TensorRT cannot be captured (a synchronising
        layer, a lazy allocation) the context keeps enqueueing directly."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._enqueue(stream)
        except (RuntimeError, BackendError) as e:
            self.capturable = False
            log.warning("%s runs without a CUDA graph (capture failed: %s)", self.network, e)
            return
        self.graph = graph
