"""One call of each inference network per backend: the `small` configuration's image encoder
at batch 1, denoiser and decoder at batch 16 (n = 16 samples of one image), random weights,
on torch and onnxruntime (CPU); torch on CUDA and TensorRT too where there is a GPU (and the
tensorrt package), skipped otherwise. Each call takes and returns numpy, as sample() drives
the backends. A pytest-benchmark suite; options go to pytest, and --no-write leaves
benchmarks/RESULTS.md as it is.

    python benchmarks/speed/network_calls.py [pytest options]
"""
import sys

import pytest
import torch

from ldseg_rt.backends import create_backend, tensorrt_available
from ldseg_rt.bench import network_inputs
from ldseg_rt.bench.script import run_suite
from ldseg_rt.configs import get_config
from ldseg_rt.export import export_bundle
from ldseg_rt.models import build_model

CONFIG, N = "small", 16
BACKENDS = {  # id: (backend, device, precision)
    "torch": ("torch", "cpu", "fp32"),
    "onnxruntime": ("onnxruntime", "cpu", "fp32"),
    "torch-cuda": ("torch", "cuda", "fp32"),
    "tensorrt-fp16": ("tensorrt", "cuda", "fp16"),
}


@pytest.fixture(scope="module")
def model():
    return build_model(get_config(CONFIG), seed=0)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    return export_bundle(model, tmp_path_factory.mktemp("bundle") / f"{CONFIG}.ldseg", check_batches=(1,),
                         progress=False)


@pytest.fixture(scope="module")
def backends():
    return {}  # built on first use, shared by the three networks


@pytest.mark.parametrize("network", ["image_encoder", "denoiser", "decoder"])
@pytest.mark.parametrize("backend_id", list(BACKENDS))
def test_network_call(benchmark, model, bundle, backends, backend_id, network):
    name, device, precision = BACKENDS[backend_id]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if name == "tensorrt" and not tensorrt_available():
        pytest.skip("needs the tensorrt package")
    if backend_id not in backends:
        backends[backend_id] = create_backend(name, model if name == "torch" else bundle, device, precision)
    backend = backends[backend_id]
    inputs = [t.numpy() for t in network_inputs(model.config, N)[network]]
    backend.run(network, *inputs)  # first call: engine builds, CUDA graph capture, allocator warm-up
    benchmark(backend.run, network, *inputs)


if __name__ == "__main__":
    sys.exit(run_suite(__file__))
