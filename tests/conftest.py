"""Shared test helpers."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run under its interpreter on a machine without a GPU; triton reads the
    # variable when a kernel is defined, so it must be set before ldseg_rt.kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ldseg_rt.configs import get_config
from ldseg_rt.models import LDSeg


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Keras' zero initialisers leave attention projections and second convs at 0; a test
    that compares implementations must exercise them, so every parameter gets noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen) / max(1.0, p[0].numel() ** 0.5))
    return model


def ref_gamma_b(t, b, clamp):
    """Independent float64 oracle of the pixel family's schedule: g_b = b^2 g / ((b^2 - 1) g + 1)
    for g = cos^2(pi t / 2), then the log-SNR clamp; returns (g_b, logSNR_b)."""
    g = np.cos(np.pi * np.asarray(t, np.float64) / 2) ** 2
    gb = b * b * g / ((b * b - 1) * g + 1)
    with np.errstate(divide="ignore"):
        lam = np.clip(np.log(gb) - np.log1p(-gb), -clamp, clamp)
    return 1 / (1 + np.exp(-lam)), lam


@pytest.fixture(scope="session")
def small_model() -> LDSeg:
    return perturbed(LDSeg.from_config(get_config("small"), seed=3), seed=4).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs every run; the seed is printed, so a failure can be replayed."""
    seed = np.random.SeedSequence().entropy
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def builtin_bundle(tmp_path_factory):
    """The built-in model exported once per run, with the default checks (batches 1, 16, 32)."""
    from ldseg_rt.models.checkpoint import load_model
    from ldseg_rt.export import export_bundle
    return export_bundle(load_model("builtin:phantom"), tmp_path_factory.mktemp("bundles") / "phantom.ldseg",
                         source="builtin:phantom", progress=False)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """The Ray batch tests' study list (tests/distributed): three volumes and a PNG, four cases."""
    from distributed_cases import write_cases  # on the path once a test in tests/distributed asks for this
    return write_cases(tmp_path_factory.mktemp("study") / "cases", volumes=3)


@pytest.fixture(scope="session")
def reference(study, tmp_path_factory) -> Path:
    """The plain single-process `python -m ldseg_rt segment` run of the study, with the same
    flags (and torch's thread count of this process, which the Ray actors take too)."""
    import subprocess
    import sys

    from distributed_cases import FLAGS, MODEL
    out = tmp_path_factory.mktemp("reference") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-m", "ldseg_rt", "segment", str(study), "-m", MODEL, "-o", str(out), *FLAGS],
                   env=env, check=True, capture_output=True, timeout=600)
    return out
