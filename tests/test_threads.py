"""Importing ldseg_rt keeps PyTorch's OpenMP threads from spinning long on a busy machine,
unless the user chose otherwise."""
import os
import subprocess
import sys


def spincount_after_import(environment: dict) -> str:
    code = "import ldseg_rt, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_short_spin_by_default_and_the_users_setting_kept():
    environment = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert spincount_after_import(environment) == "1000"
    assert spincount_after_import({**environment, "GOMP_SPINCOUNT": "250000"}) == "250000"
