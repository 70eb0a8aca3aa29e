"""The TensorRT backend: runs a bundle's graphs as TensorRT engines on an NVIDIA GPU.

Engines are built on first use, for this GPU, and cached in the bundle (tensorrt_engines);
a call whose batch is past its engine's profile rebuilds that engine with a wider one.
The sampling loop stays on the GPU: DeviceLoop, the torch backend's, with the TensorRT
denoiser in place of the module (the Triton step kernel between steps, the whole K-step loop
captured in one CUDA graph), so latents cross to the host once, at the end. TensorRT runs on
the current torch stream. Every input shape gets its own execution context with static
device buffers, so a context never changes shape or addresses once a graph has captured it;
the contexts of one engine share one scratch allocation, as they run one at a time on one stream.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..bundle import Bundle
from ..configs import config_from_dict
from ..diffusion.plan import SamplingPlan
from ..errors import BackendError, DeviceError
from ..options import DEFAULT_N
from .base import Backend
from .device_loop import DeviceLoop
from .tensorrt_engines import EngineCache, GpuIdentity, Profile, import_tensorrt, network_profiles, tensorrt_logger

log = logging.getLogger(__name__)

MAX_SHAPES = 8  # per network: input shapes kept with their context


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str, n: int = DEFAULT_N, max_images: int = 4):
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
        self._cache = EngineCache(self.trt, bundle, GpuIdentity.of(self.device), precision)
        self._runtime = self.trt.Runtime(tensorrt_logger(self.trt))
        self._stream = torch.cuda.Stream(self.device)
        self._start(bundle, precision, n, max_images)

    def _start(self, bundle: Bundle, precision: str, n: int, max_images: int) -> None:
        """The state that needs no GPU (self.trt and self.device set)."""
        self.precision = precision
        self.config = config_from_dict(bundle.manifest["config"], bundle.manifest["family"])
        self._bundle = bundle
        self._profiles = network_profiles(n, max_images, self.decode_batch)  # decode_batch: config, device
        self._engines: dict[str, _Engine] = {}
        self._lock = threading.Lock()  # the contexts, and the loop's captured graphs, are shared state
        self._loop: DeviceLoop | None = None
        self._loop_generation = -1  # the denoiser contexts' generation the loop's graphs were captured in
        self._cuda_graphs = True

    def run(self, network: str, *arrays: np.ndarray) -> np.ndarray:
        if network not in self._profiles:
            raise BackendError(f"unknown network {network!r}; the bundle's are {list(self._profiles)}")
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        batch = arrays[0].shape[0] if arrays[0].ndim else 0
        if batch < 1 or any(a.ndim == 0 or a.shape[0] != batch for a in arrays):
            raise BackendError(f"{network}: the inputs need one batch size >= 1, got shapes "
                               f"{[a.shape for a in arrays]}")
        with self._lock, self._on_device():
            engine = self._engine(network, batch)
            output = engine.infer([torch.from_numpy(a) for a in arrays], self._stream_handle())
            return output.cpu().numpy()  # waits for the stream

    def sample_latents(self, z_i: np.ndarray, seeds: list[int], n: int, plan: SamplingPlan,
                       first_sample: int = 0) -> np.ndarray:
        """The loop on the GPU (DeviceLoop) with the TensorRT denoiser."""
        rows = len(seeds) * n
        with self._lock, self._on_device():
            engine = self._engine("denoiser", rows)
            # The context for this shape made, or made the most recent, before the loop runs or
            # replays: a loop graph must not outlive the context it captured (see _Engine.shape).
            engine.shape(((rows, *plan.latent_shape), (rows, *z_i.shape[1:]), (rows,)))
            if self._loop is None or self._loop_generation != engine.generation:
                self._loop, self._loop_generation = self._device_loop(), engine.generation
            try:
                return self._loop(z_i, seeds, n, plan, first_sample)
            except (RuntimeError, BackendError) as e:  # where TensorRT cannot be captured: step by step
                if not self._loop.cuda_graphs:
                    raise
                log.warning("the TensorRT sampling loop runs without a CUDA graph (capture failed: %s)", e)
                self._cuda_graphs = False
                self._loop = self._device_loop()
                return self._loop(z_i, seeds, n, plan, first_sample)

    def _device_loop(self) -> DeviceLoop:
        # precision "fp32": no torch autocast around TensorRT, whose engine has its own precision.
        return DeviceLoop(self._denoise_on_device, self.device, "fp32", self._cuda_graphs)

    def _denoise_on_device(self, z: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The loop's denoiser: device tensors in, the model output out (read by the step kernel
        before the next call overwrites it), on the current stream: the loop's, or its capture's."""
        return self._engines["denoiser"].infer([z, condition, t], self._stream_handle())

    @contextlib.contextmanager
    def _on_device(self):
        """This GPU and this backend's stream current: where TensorRT and the loop run."""
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            yield

    def _stream_handle(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def _engine(self, network: str, batch: int) -> _Engine:
        """The network's engine, (re)built when `batch` is outside its profile."""
        engine = self._engines.get(network)
        if engine is not None and engine.profile.contains(batch):
            return engine
        profile = engine.profile.widened(batch) if engine is not None else self._profiles[network]
        if not profile.contains(batch):
            profile = profile.widened(batch)
        if engine is not None:  # free the old engine's memory for TensorRT before the new one loads
            if network == "denoiser":  # and the loop graphs that captured it
                self._loop = None
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
        self.generation = 0

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

    def infer(self, inputs: list[torch.Tensor], stream: int) -> torch.Tensor:
        """The (first) output for these tensors (on any device), computed on `stream`: the
        context's own output buffer, valid until the next call at this shape."""
        return self.shape(tuple(tuple(x.shape) for x in inputs)).run(inputs, stream)

    def shape(self, shapes: tuple) -> _Shape:
        """The context for these input shapes, the least recently used one dropped past MAX_SHAPES.
        A drop bumps `generation`: CUDA graphs captured with this engine may use that context."""
        entry = self.shapes.pop(shapes, None) or _Shape(self, shapes)
        self.shapes[shapes] = entry
        if len(self.shapes) > MAX_SHAPES:
            self.shapes.popitem(last=False)
            self.generation += 1
        return entry


class _Shape:
    """One input shape's execution context and its static device buffers. TensorRT always sees
    the same addresses for a context: every enqueue captured with it, in one CUDA graph or
    several, then agrees with what the context holds, and the inputs are copied in on the GPU."""

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
        out_shapes = [tuple(self.context.get_tensor_shape(name)) for name in engine.outputs]
        for name, shape in zip(engine.outputs, out_shapes):
            if any(d < 0 for d in shape):
                raise BackendError(f"TensorRT cannot tell the shape of {self.network} output {name!r} ({shape})")
        # Normal tensors, not inference ones: a call outside inference_mode writes them too.
        with torch.inference_mode(False):
            self.inputs = [torch.empty(s, dtype=torch.float32, device=engine.device) for s in shapes]
            self.outputs = [torch.empty(s, dtype=torch.float32, device=engine.device) for s in out_shapes]
        for name, tensor in zip(engine.inputs + engine.outputs, self.inputs + self.outputs):
            self.context.set_tensor_address(name, tensor.data_ptr())

    def run(self, inputs: list[torch.Tensor], stream: int) -> torch.Tensor:
        """Enqueues on `stream`, the current stream (the copies in run on it too)."""
        for buffer, tensor in zip(self.inputs, inputs):
            buffer.copy_(tensor)
        if not self.context.execute_async_v3(stream):
            raise BackendError(f"TensorRT failed to run {self.network} (see its messages above)")
        return self.outputs[0]
