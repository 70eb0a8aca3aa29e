"""Fixtures of the Ray batch tests: a small study list and its single-process reference run."""
from pathlib import Path

import pytest

from distributed_cases import FLAGS, MODEL, write_cases


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """Three volumes and a PNG: four cases."""
    return write_cases(tmp_path_factory.mktemp("study") / "cases", volumes=3)


@pytest.fixture(scope="session")
def reference(study, tmp_path_factory) -> Path:
    """The plain single-process `python -m ldseg_rt segment` run of the study, with the same
    flags (and torch's thread count of this process, which the Ray actors take too). Its
    OpenMP threads wait passively: on a machine shared with other work, spinning ones make it
    many times slower, and the wait policy changes no result."""
    import os
    import subprocess
    import sys

    import torch
    out = tmp_path_factory.mktemp("reference") / "out"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-m", "ldseg_rt", "segment", str(study), "-m", MODEL, "-o", str(out), *FLAGS],
                   env=env, check=True, capture_output=True, timeout=600)
    return out
