"""The sampling loop without a network: C++ (ldseg_rt._C) against the float64 Python
reference, glas512's latent (1x32x32), 16 samples, 15 steps, DDIM eta 0 and 1, with an
analytic elementwise denoiser, so that what is timed is the loop's own cost (noise, step
math, renormalisation). A pytest-benchmark suite; options go to pytest, and --no-write
leaves benchmarks/RESULTS.md as it is.

    python benchmarks/speed/sampler_loop.py [pytest options]
"""
import sys

import numpy as np
import pytest

from ldseg_rt.bench.script import run_suite
from ldseg_rt.diffusion.oracle import reference_sample
from ldseg_rt.diffusion.sampler import sample_latents
from ldseg_rt.diffusion.tables import ldseg_table

SHAPE, N, STEPS = (1, 32, 32), 16, 15


def analytic_denoiser(z, t):
    return np.tanh(0.5 * z) * np.float32(1 - t[0] / 2000)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_cpp_sampler(benchmark, eta):
    table = ldseg_table(STEPS, eta)
    benchmark(sample_latents, analytic_denoiser, [0], N, SHAPE, table)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_python_reference_sampler(benchmark, eta):
    table = ldseg_table(STEPS, eta)
    benchmark(reference_sample, analytic_denoiser, [0], N, SHAPE, table)


if __name__ == "__main__":
    sys.exit(run_suite(__file__))
