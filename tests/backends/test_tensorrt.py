"""The tensorrt backend without TensorRT: a clear error, the rest of the package unharmed.
With the TensorRT-RTX builder, which builds without a GPU: every graph of the built-in model
becomes a plan through the engine cache, which serves a plan again while its key holds and
says why it rebuilds when not; the build recipe (TF32 off, fp32 layers) read off the parsed
network and builder config. The backend's own code (contexts, buffers, the loop on the
device) runs on the CPU over a fake engine that ONNX Runtime computes; real engines run only
where TensorRT and a GPU are (the last test)."""
import contextlib
import copy
import ctypes
import io
import json
import logging
import shutil
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.backends import choose_backend, create_backend, tensorrt_backend, tensorrt_engines
from ldseg_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldseg_rt.backends.tensorrt_backend import TensorRTBackend, _Engine
from ldseg_rt.backends.tensorrt_engines import (EngineCache, GpuIdentity, Profile, build_plan, build_recipe,
                                                builder_config, fp32_layers, import_tensorrt, network_profiles,
                                                parse_network, recipe_sha256, stale_reason, tensorrt_usable)
from ldseg_rt.bundle import Bundle, load_bundle, sha256
from ldseg_rt.diffusion.plan import sampling_plan
from ldseg_rt.errors import BackendError, DeviceError, InvalidArgumentError

GPU = GpuIdentity("Test GPU A", "sm_89")
PROFILES = network_profiles(16, 2)


@pytest.fixture(scope="module")
def bundle(builtin_bundle, tmp_path_factory):
    """A copy of the session's built-in bundle: the engine cache writes into it."""
    return load_bundle(shutil.copytree(builtin_bundle.path, tmp_path_factory.mktemp("trt") / "phantom.ldseg"))


@pytest.fixture
def no_tensorrt(monkeypatch):
    """`import tensorrt` fails, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_without_tensorrt_the_error_says_what_to_do(no_tensorrt, bundle):
    with pytest.raises(BackendError, match=r"needs the TensorRT Python package \(pip install 'tensorrt>=10.1,<11'\) "
                                           r"and an NVIDIA GPU; use backend='onnxruntime' or 'torch'"):
        import_tensorrt()
    assert not tensorrt_usable()
    with pytest.raises(BackendError, match=r"pip install 'tensorrt>=10.1,<11'"):
        TensorRTBackend(bundle, torch.device("cuda"), "fp16")  # fails before touching CUDA
    for make in (lambda: Segmenter(bundle.path, backend="tensorrt", device="cpu"),
                 lambda: create_backend("tensorrt", bundle, device="cpu", precision="fp32")):
        with pytest.raises(DeviceError, match=r"backend 'tensorrt' runs on an NVIDIA GPU, not on 'cpu'"):
            make()
    assert choose_backend(bundle, torch.device("cuda")) == "torch"
    result = Segmenter(bundle.path, backend="onnxruntime", device="cpu").sample(
        np.random.default_rng(0).random((40, 56), dtype=np.float32), n=2, steps=2, seed=1)
    assert result.mask.shape == (40, 56)


@pytest.mark.parametrize("version, usable", [("10.1.0.27", True), ("10.13.3.9", True), ("10.0.1.6", False),
                                              ("11.0.0.114", False), ("8.6.1", False), ("dev", False)])
def test_only_tensorrt_10_1_to_10_x_is_usable(monkeypatch, version, usable):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert tensorrt_usable() == usable
    if usable:
        assert import_tensorrt() is fake
        return
    with pytest.raises(BackendError) as caught:
        import_tensorrt()
    assert f"needs TensorRT 10.1 or a later 10.x; this is TensorRT {version}" in str(caught.value)
    assert "pip install 'tensorrt>=10.1,<11', or use backend='torch'" in str(caught.value)
    assert ("strongly typed only" in str(caught.value)) == version.startswith("11.")


def test_profiles_for_n_samples_and_max_images():
    # The decoder gets one image's samples per call, decode_batch at a time (Segmenter._decode).
    assert PROFILES == {"image_encoder": Profile(1, 1, 2), "denoiser": Profile(1, 16, 32),
                        "decoder": Profile(1, 16, 16)}
    assert network_profiles(16, 2, 4)["decoder"] == Profile(1, 4, 4)
    assert network_profiles(2, 3, 4)["decoder"] == Profile(1, 2, 2)
    assert Profile(1, 16, 32).widened(40) == Profile(1, 16, 64)
    assert Profile(1, 16, 32).widened(100) == Profile(1, 16, 100)
    assert Profile(1, 16, 64).covers(Profile(1, 4, 32)) and not Profile(1, 16, 32).covers(Profile(1, 16, 64))
    with pytest.raises(InvalidArgumentError, match="min <= opt <= max"):
        Profile(1, 64, 32)
    with pytest.raises(InvalidArgumentError, match="max_images must be an integer >= 1"):
        network_profiles(16, 0)


KEY = {"network": "denoiser", "graph_sha256": "a" * 64, "profile": {"min": 1, "opt": 16, "max": 64},
       "precision": "fp16", "recipe": build_recipe("fp16"), "recipe_sha256": recipe_sha256(build_recipe("fp16")),
       "tensorrt": "10.3.0", "gpu": "NVIDIA B", "compute_capability": "sm_90", "bundle_format_version": 1}
TF32_ON = {**build_recipe("fp16"), "tf32": True}


@pytest.mark.parametrize("change, reason", [
    ({"gpu": "NVIDIA A", "compute_capability": "sm_86", "tensorrt": "10.1.0"},
     "was built for GPU 'NVIDIA A' (sm_86) / TensorRT 10.1.0, this is GPU 'NVIDIA B' (sm_90) / TensorRT 10.3.0"),
    ({"compute_capability": "sm_86"}, "GPU 'NVIDIA B' (sm_86) / TensorRT 10.3.0, this is GPU 'NVIDIA B' (sm_90)"),
    ({"tensorrt": "10.1.0"}, "TensorRT 10.1.0, this is GPU 'NVIDIA B' (sm_90) / TensorRT 10.3.0"),
    ({"graph_sha256": "b" * 64}, "was built before its graph changed (sha256 bbbbbbbbbbbb... -> aaaaaaaaaaaa...)"),
    ({"precision": "fp32"}, "was built for fp32, fp16 is wanted"),
    ({"bundle_format_version": 0}, "bundle of format version 0, this one has 1"),
    ({"profile": {"min": 1, "opt": 16, "max": 32}}, "has profile max batch 32 < 64 needed"),
    ({"profile": {"min": 2, "opt": 16, "max": 64}}, "has profile min batch 2 > 1 needed"),
    ({"profile": "1..64"}, "has no valid batch profile ('1..64')"),
    ({"network": "decoder"}, "has network 'decoder', 'denoiser' is wanted"),
    ({"recipe": TF32_ON, "recipe_sha256": recipe_sha256(TF32_ON)},
     f"was built by another build recipe (sha256 {recipe_sha256(TF32_ON)[:12]}... -> "
     f"{KEY['recipe_sha256'][:12]}...; changed: tf32)"),
    ({"recipe": None, "recipe_sha256": None}, f"another build recipe (sha256 None... -> {KEY['recipe_sha256'][:12]}"),
])
def test_stale_reason_names_each_mismatch(change, reason):
    got = stale_reason({**KEY, **change}, KEY)
    assert got is not None and reason in got


def test_stale_reason_accepts_a_matching_or_wider_key_and_lists_every_mismatch():
    assert stale_reason(KEY, KEY) is None
    assert stale_reason({**KEY, "profile": {"min": 1, "opt": 8, "max": 128}, "plan_sha256": "c" * 64}, KEY) is None
    both = stale_reason({**KEY, "precision": "fp32", "graph_sha256": "b" * 64}, KEY)
    assert "graph changed" in both and "fp16 is wanted" in both
    assert "was built for GPU None" in stale_reason({}, KEY)


@pytest.fixture(scope="module")
def trt():
    return pytest.importorskip("tensorrt_rtx_bindings")


@contextlib.contextmanager
def logged(stream):
    """What ldseg_rt logs inside the block, written to `stream`."""
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("ldseg_rt")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def built(trt, bundle):
    """Every network built once through the cache; the plans and what the cache printed."""
    cache, stderr = EngineCache(trt, bundle, GPU, "fp32"), io.StringIO()
    with logged(stderr):
        plans = {network: cache.plan(network, profile) for network, profile in PROFILES.items()}
    return cache, plans, stderr.getvalue()


def test_every_graph_builds_into_a_plan_with_its_key(trt, bundle, built):
    cache, plans, printed = built
    assert cache.folder == bundle.engines_dir / f"test-gpu-a-sm_89-trt{trt.__version__}-fp32"
    for network, profile in PROFILES.items():
        got = plans[network]
        assert got.built and isinstance(got.plan, bytes) and len(got.plan) > 10_000 and got.profile == profile
        assert (cache.folder / f"{network}.plan").read_bytes() == got.plan
        key = json.loads((cache.folder / f"{network}.json").read_text())
        assert key["graph_sha256"] == bundle.manifest["files"][f"onnx/{network}.onnx"] == sha256(bundle.onnx(network))
        assert key["profile"] == {"min": 1, "opt": profile.opt, "max": profile.max}
        assert (key["gpu"], key["compute_capability"], key["tensorrt"], key["precision"]) == \
            (GPU.name, "sm_89", trt.__version__, "fp32")
        assert key["plan_sha256"] == sha256(got.plan)
        assert key["recipe"] == build_recipe("fp32") and key["recipe_sha256"] == recipe_sha256(build_recipe("fp32"))
        assert f"the TensorRT engine for {network} has not been built yet: building it" in printed
    assert load_bundle(bundle.path).manifest["files"] == bundle.manifest["files"]  # engines are not hashed


def test_a_second_request_is_served_from_the_cache(trt, bundle, built, monkeypatch):
    _, plans, _ = built
    logged_lines = io.StringIO()

    def no_build(*args, **kwargs):
        raise AssertionError("a cached engine was rebuilt")

    monkeypatch.setattr(tensorrt_engines, "build_plan", no_build)
    cache = EngineCache(trt, load_bundle(bundle.path), GPU, "fp32")  # as a new process would
    with logged(logged_lines):
        for network, profile in PROFILES.items():
            plan_file = cache.folder / f"{network}.plan"
            before = plan_file.stat().st_mtime_ns
            got = cache.plan(network, profile)
            assert not got.built and got.plan == plans[network].plan and plan_file.stat().st_mtime_ns == before
        narrower = cache.plan("decoder", Profile(1, 4, 8))  # a plan whose profile covers the request serves it
    assert not narrower.built and narrower.profile == PROFILES["decoder"]
    assert logged_lines.getvalue() == ""  # nothing rebuilt, nothing said


@pytest.fixture
def own(built, bundle, tmp_path):
    """The bundle with its engines built, in a folder this test may change."""
    return load_bundle(shutil.copytree(bundle.path, tmp_path / "own.ldseg"))


def rebuild(cache: EngineCache, network: str, profile: Profile) -> str:
    """What the cache printed while building; fails if it served a cached plan."""
    stderr = io.StringIO()
    with logged(stderr):
        got = cache.plan(network, profile)
    assert got.built and got.profile == profile
    return stderr.getvalue()


def test_another_gpu_builds_its_own_engine_and_says_why(trt, own):
    other = EngineCache(trt, own, GpuIdentity("Test GPU B", "sm_90"), "fp32")
    v = trt.__version__
    assert (f"the TensorRT engine for decoder was built for GPU 'Test GPU A' (sm_89) / TensorRT {v}, this is "
            f"GPU 'Test GPU B' (sm_90) / TensorRT {v}: building it") in rebuild(other, "decoder", PROFILES["decoder"])
    for gpu in (GPU, other.gpu):  # each GPU's engine stays, side by side
        assert not EngineCache(trt, own, gpu, "fp32").plan("decoder", PROFILES["decoder"]).built


def test_another_tensorrt_version_rebuilds_and_says_why(trt, own):
    newer = types.ModuleType(trt.__name__)
    newer.__dict__.update(vars(trt))
    newer.__version__ = "99.0.0"
    printed = rebuild(EngineCache(newer, own, GPU, "fp32"), "image_encoder", PROFILES["image_encoder"])
    assert (f"was built for GPU 'Test GPU A' (sm_89) / TensorRT {trt.__version__}, this is GPU 'Test GPU A' "
            "(sm_89) / TensorRT 99.0.0: building it") in printed


def test_a_changed_graph_rebuilds_and_says_why(trt, own):
    graph = onnx.load_from_string(own.onnx("decoder"))
    graph.doc_string = "re-exported"
    data = graph.SerializeToString()
    manifest = copy.deepcopy(own.manifest)
    manifest["files"]["onnx/decoder.onnx"] = sha256(data)
    files = {**{name: own.read(name) for name in own.manifest["files"]}, "onnx/decoder.onnx": data}
    changed = Bundle(own.path, manifest, files)
    printed = rebuild(EngineCache(trt, changed, GPU, "fp32"), "decoder", PROFILES["decoder"])
    old = own.manifest["files"]["onnx/decoder.onnx"]
    assert f"for decoder was built before its graph changed (sha256 {old[:12]}... -> {sha256(data)[:12]}...)" \
        ": building it" in printed
    key = json.loads((EngineCache(trt, own, GPU, "fp32").folder / "decoder.json").read_text())
    assert key["graph_sha256"] == sha256(data)


def test_a_changed_build_recipe_rebuilds_and_says_why(trt, own, monkeypatch):
    monkeypatch.setattr(tensorrt_engines, "OPTIMIZATION_LEVEL", 2)
    cache = EngineCache(trt, own, GPU, "fp32")
    printed = rebuild(cache, "decoder", PROFILES["decoder"])
    assert "for decoder was built by another build recipe (sha256 " in printed
    assert "; changed: optimization_level): building it" in printed
    key = json.loads((cache.folder / "decoder.json").read_text())
    assert key["recipe"]["optimization_level"] == 2 and key["recipe_sha256"] == recipe_sha256(key["recipe"])


def test_a_larger_batch_a_damaged_plan_or_a_plan_that_will_not_load_rebuilds(trt, own):
    cache, wide = EngineCache(trt, own, GPU, "fp32"), Profile(1, 16, 64)
    assert "for decoder has profile max batch 16 < 64 needed: building it" in rebuild(cache, "decoder", wide)
    assert cache.plan("decoder", PROFILES["decoder"]).profile == wide  # the wider plan now serves both
    plan_file = cache.folder / "decoder.plan"
    plan_file.write_bytes(plan_file.read_bytes()[:1000])
    assert "does not match the sha256 its key records" in rebuild(cache, "decoder", wide)
    stderr = io.StringIO()
    with logged(stderr):
        assert cache.plan("decoder", wide, rebuild="could not be loaded by TensorRT").built
    assert "the TensorRT engine for decoder could not be loaded by TensorRT: building it" in stderr.getvalue()


def test_fp16_on_a_strongly_typed_builder_is_refused(trt, bundle, own):
    with pytest.raises(BackendError, match="strongly typed: it has no FP16 or OBEY_PRECISION_CONSTRAINTS flag"
                                           ".*use precision='fp32'"):
        build_plan(trt, bundle.onnx("decoder"), bundle.network("decoder"), PROFILES["decoder"], "fp16")
    cache = EngineCache(trt, own, GPU, "fp16")
    stderr = io.StringIO()
    with logged(stderr), pytest.raises(BackendError, match="strongly typed"):
        cache.plan("decoder", PROFILES["decoder"])
    assert "was built for fp32, fp16 is wanted" in stderr.getvalue()
    assert not (cache.folder / "decoder.plan").exists()


def test_an_unparsable_graph_lists_the_parser_errors(trt, bundle):
    with pytest.raises(BackendError, match="TensorRT cannot parse the ONNX graph:\n  .*Failed to parse"):
        build_plan(trt, b"not an onnx graph", bundle.network("decoder"), PROFILES["decoder"], "fp32")


def test_a_bundle_that_cannot_be_written_still_gets_its_engine(trt, own, monkeypatch):
    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tensorrt_engines, "_write", read_only)
    cache = EngineCache(trt, own, GpuIdentity("Test GPU C", "sm_80"), "fp32")
    printed = rebuild(cache, "decoder", PROFILES["decoder"])
    assert "not cached" in printed and "Permission denied" in printed and not cache.folder.exists()


def test_fp32_builds_clear_tf32_which_tensorrt_sets_by_default(trt, bundle):
    parsed = parse_network(trt, bundle.onnx("decoder"), bundle.network("decoder"))
    assert parsed.builder.create_builder_config().get_flag(trt.BuilderFlag.TF32)  # the default the recipe undoes
    config = builder_config(trt, parsed, bundle.network("decoder"), PROFILES["decoder"], "fp32")
    assert not config.get_flag(trt.BuilderFlag.TF32)
    assert config.builder_optimization_level == build_recipe("fp32")["optimization_level"] == 3


# The built-in denoiser's sinusoidal time embedding up to the first matmul of the time MLP, with
# the frequencies and weights it reads; the bias add and SiLU after that matmul stay fp16.
TIME_PATH = {"/time_embedding/Cast", "/time_embedding/Unsqueeze", "/time_embedding/Constant_1_output_0",
             "/time_embedding/Mul", "/time_embedding/Sin", "/time_embedding/Cos", "/time_embedding/Concat",
             "time_mlp.0.weight", "/time_mlp/time_mlp.0/Gemm"}


def test_fp16_keeps_the_time_embedding_and_norms_in_fp32(trt, bundle):
    network = parse_network(trt, bundle.onnx("denoiser"), bundle.network("denoiser")).network
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    kinds = {getattr(trt.LayerType, k) for k in tensorrt_engines.FP32_LAYERS}
    norms = {name for name, layer in layers.items() if layer.type in kinds and layer.get_output(0).dtype == trt.float32}
    pinned = fp32_layers(trt, network)
    assert norms and pinned - norms == TIME_PATH
    assert {"/time_mlp/time_mlp.0/Gemm_0", "/time_mlp/time_mlp.1/Sigmoid", "/stem/Conv"}.isdisjoint(pinned)
    decoder = parse_network(trt, bundle.onnx("decoder"), bundle.network("decoder")).network
    assert not {decoder.get_layer(i).type for i in range(decoder.num_layers)
                if decoder.get_layer(i).name in fp32_layers(trt, decoder)} - kinds  # no t, no time path


# The backend on the CPU: a fake TensorRT whose engine is the bundle's graph in ONNX Runtime,
# reading and writing the tensors at the addresses it is given, as TensorRT does on a GPU.
FAKE_TRT = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="input", OUTPUT="output"),
                                 float32="float32")


def _host_array(address: int, shape: tuple) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class FakeEngine:
    def __init__(self, session, entry: dict):
        self.session, self.entry, self.calls = session, entry, []
        self.names = [*entry["inputs"], *entry["outputs"]]
        self.num_io_tensors, self.device_memory_size_v2 = len(self.names), 0

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FAKE_TRT.TensorIOMode.INPUT if name in self.entry["inputs"] else FAKE_TRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FAKE_TRT.float32

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *self.engine.entry["outputs"][name]["shape"][1:])

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        inputs = {name: _host_array(self.addresses[name], shape).copy() for name, shape in self.shapes.items()}
        for name, value in zip(self.engine.entry["outputs"], self.engine.session.run(None, inputs)):
            _host_array(self.addresses[name], value.shape)[...] = value
        self.engine.calls.append((stream, dict(self.addresses)))
        return True


class CpuTensorRT(TensorRTBackend):
    """TensorRTBackend's own code with FakeEngines on the CPU; stream 7 stands for the current one."""

    def __init__(self, bundle, onnxruntime: OnnxRuntimeBackend, n: int, max_images: int):
        self.trt, self.device, self.onnxruntime = FAKE_TRT, torch.device("cpu"), onnxruntime
        self._start(bundle, "fp32", n, max_images)
        self.loaded = []

    def _load(self, network, profile):
        self.loaded.append((network, profile))
        fake = FakeEngine(self.onnxruntime._sessions[network], self._bundle.network(network))
        return _Engine(FAKE_TRT, network, fake, self._bundle.network(network), profile, self.device)

    def _on_device(self):
        return contextlib.nullcontext()

    def _stream_handle(self):
        return 7


@pytest.fixture(scope="module")
def reference(bundle):
    return OnnxRuntimeBackend(bundle, torch.device("cpu"))


def test_the_decoder_profile_is_what_segmenter_decodes_per_call(bundle, reference):
    assert reference.decode_batch == 4  # a CPU device: what CpuTensorRT's decode_batch is too
    assert CpuTensorRT(bundle, reference, n=16, max_images=4)._profiles == network_profiles(16, 4, 4)
    assert CpuTensorRT(bundle, reference, n=2, max_images=4)._profiles["decoder"] == Profile(1, 2, 2)


def test_the_loop_runs_on_the_device_with_the_engine_and_matches_the_sampler(bundle, reference, monkeypatch):
    backend = CpuTensorRT(bundle, reference, n=2, max_images=1)
    z_i = reference.encode(np.random.default_rng(0).random((2, 1, 128, 128), dtype=np.float32))
    plan, seeds = sampling_plan(backend.config, 3, 1.0), [5, 2 ** 64 - 3]

    def no_host_path(*args):
        raise AssertionError("a denoiser step went through run(), numpy in and out")

    monkeypatch.setattr(backend, "run", no_host_path)
    first = backend.sample_latents(z_i[:1], seeds[:1], 2, plan, first_sample=1)
    loop, calls = backend._loop, backend._engines["denoiser"].engine.calls
    assert len(calls) == 3 and all(call == calls[0] for call in calls)  # stream 7, one set of buffers, every step
    assert calls[0][0] == 7
    expected = reference.sample_latents(z_i[:1], seeds[:1], 2, plan, first_sample=1)
    assert np.abs(first - expected).max() <= 1e-4 * np.abs(expected).max()
    # Two images are past the denoiser's profile: a wider engine, and a new loop, whose CUDA graphs
    # cannot have captured the old engine.
    both = backend.sample_latents(z_i, seeds, 2, plan)
    assert backend.loaded[-1] == ("denoiser", Profile(1, 2, 4)) and backend._loop is not loop
    expected = reference.sample_latents(z_i, seeds, 2, plan)
    assert np.abs(both - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_dropped_context_renews_the_loop_and_run_returns_the_engine_output(bundle, reference, monkeypatch):
    backend = CpuTensorRT(bundle, reference, n=1, max_images=4)
    monkeypatch.setattr(tensorrt_backend, "MAX_SHAPES", 2)
    plan, z_i = sampling_plan(backend.config, 1, 0.0), np.zeros((3, 1, 16, 16), np.float32)
    loops = []
    for images in (1, 2, 1, 3):  # the third call finds its context, the fourth drops one
        backend.sample_latents(z_i[:images], [0] * images, 1, plan)
        loops.append(backend._loop)
    assert loops[0] is loops[1] is loops[2] is not loops[3]
    latents = np.random.default_rng(1).standard_normal((2, 1, 16, 16)).astype(np.float32)
    assert np.array_equal(backend.decode(latents), backend.onnxruntime.decode(latents))


@pytest.mark.skipif(not (torch.cuda.is_available() and tensorrt_usable()), reason="needs TensorRT 10.x and a GPU")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_on_a_gpu_engines_give_what_onnxruntime_gives(bundle, tmp_path, precision, tolerance):
    own = load_bundle(shutil.copytree(bundle.path, tmp_path / "gpu.ldseg"))
    image = np.random.default_rng(3).random((128, 128), dtype=np.float32)
    expected = Segmenter(own, backend="onnxruntime", device="cpu").sample(image, n=4, steps=5, seed=11)
    seg = Segmenter(own, backend="tensorrt", device="cuda", precision=precision)
    for _ in range(2):  # the second call replays the captured loop
        got = seg.sample(image, n=4, steps=5, seed=11)
        gap = np.abs(got.latents - expected.latents).max()
        assert gap <= tolerance * np.abs(expected.latents).max(), gap
        assert (got.samples == expected.samples).mean() >= 0.99
