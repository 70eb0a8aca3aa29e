"""Importing ldseg_rt keeps PyTorch's OpenMP threads from spinning long on a busy machine,
unless the user chose otherwise."""
import os
import subprocess
import sys


def spincounts_after_import(*environments: dict) -> list[str]:
    """GOMP_SPINCOUNT after `import ldseg_rt` in a fresh interpreter per environment, all started
    at once: each import takes seconds, and they do not depend on each other."""
    code = "import ldseg_rt, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for env in environments]
    outputs = [run.communicate() for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err
    return [out.strip() for out, _ in outputs]


def test_short_spin_by_default_and_the_users_setting_kept():
    environment = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert spincounts_after_import(environment, {**environment, "GOMP_SPINCOUNT": "250000"}) == ["1000", "250000"]
