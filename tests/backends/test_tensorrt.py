"""The tensorrt backend without TensorRT: a clear error, the rest of the package unharmed.
With the TensorRT-RTX builder, which builds without a GPU: every graph of the built-in model
becomes a plan through the engine cache, which serves a plan again while its key holds and
says why it rebuilds when not. (Running engines needs TensorRT on a GPU: not tested here.)"""
import contextlib
import copy
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
from ldseg_rt.backends import choose_backend, create_backend, tensorrt_engines
from ldseg_rt.backends.tensorrt_backend import TensorRTBackend
from ldseg_rt.backends.tensorrt_engines import (EngineCache, GpuIdentity, Profile, build_plan, import_tensorrt,
                                                network_profiles, stale_reason)
from ldseg_rt.bundle import Bundle, load_bundle, sha256
from ldseg_rt.errors import BackendError, DeviceError, InvalidArgumentError
from ldseg_rt.export import export_bundle
from ldseg_rt.models.checkpoint import load_model

GPU = GpuIdentity("Test GPU A", "sm_89")
PROFILES = network_profiles(16, 2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_bundle(load_model("builtin:phantom"), tmp_path_factory.mktemp("trt") / "phantom.ldseg",
                         check_batches=(1,), progress=False)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """`import tensorrt` fails, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_without_tensorrt_the_error_says_what_to_do(no_tensorrt, bundle):
    with pytest.raises(BackendError, match=r"needs the TensorRT Python package \(pip install tensorrt\) and an "
                                           r"NVIDIA GPU; use backend='onnxruntime' or 'torch'"):
        import_tensorrt()
    with pytest.raises(BackendError, match=r"pip install tensorrt"):
        TensorRTBackend(bundle, torch.device("cuda"), "fp16")  # fails before touching CUDA
    for make in (lambda: Segmenter(bundle.path, backend="tensorrt", device="cpu"),
                 lambda: create_backend("tensorrt", bundle, device="cpu", precision="fp32")):
        with pytest.raises(DeviceError, match=r"backend 'tensorrt' runs on an NVIDIA GPU, not on 'cpu'"):
            make()
    assert choose_backend(bundle, torch.device("cuda")) == "torch"
    result = Segmenter(bundle.path, backend="onnxruntime", device="cpu").sample(
        np.random.default_rng(0).random((40, 56), dtype=np.float32), n=2, steps=2, seed=1)
    assert result.mask.shape == (40, 56)


def test_profiles_for_n_samples_and_max_images():
    assert PROFILES == {"image_encoder": Profile(1, 1, 2), "denoiser": Profile(1, 16, 32),
                        "decoder": Profile(1, 16, 32)}
    assert Profile(1, 16, 32).widened(40) == Profile(1, 16, 64)
    assert Profile(1, 16, 32).widened(100) == Profile(1, 16, 100)
    assert Profile(1, 16, 64).covers(Profile(1, 4, 32)) and not Profile(1, 16, 32).covers(Profile(1, 16, 64))
    with pytest.raises(InvalidArgumentError, match="min <= opt <= max"):
        Profile(1, 64, 32)
    with pytest.raises(InvalidArgumentError, match="max_images must be an integer >= 1"):
        network_profiles(16, 0)


KEY = {"network": "denoiser", "graph_sha256": "a" * 64, "profile": {"min": 1, "opt": 16, "max": 64},
       "precision": "fp16", "tensorrt": "10.3.0", "gpu": "NVIDIA B", "compute_capability": "sm_90",
       "bundle_format_version": 1}


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


def test_a_larger_batch_a_damaged_plan_or_a_plan_that_will_not_load_rebuilds(trt, own):
    cache, wide = EngineCache(trt, own, GPU, "fp32"), Profile(1, 16, 64)
    assert "for decoder has profile max batch 32 < 64 needed: building it" in rebuild(cache, "decoder", wide)
    assert cache.plan("decoder", PROFILES["decoder"]).profile == wide  # the wider plan now serves both
    plan_file = cache.folder / "decoder.plan"
    plan_file.write_bytes(plan_file.read_bytes()[:1000])
    assert "does not match the sha256 its key records" in rebuild(cache, "decoder", wide)
    stderr = io.StringIO()
    with logged(stderr):
        assert cache.plan("decoder", wide, rebuild="could not be loaded by TensorRT").built
    assert "the TensorRT engine for decoder could not be loaded by TensorRT: building it" in stderr.getvalue()


def test_fp16_on_a_strongly_typed_builder_is_refused(trt, bundle, own):
    with pytest.raises(BackendError, match="strongly typed: it has no FP16 flag.*use precision='fp32'"):
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
