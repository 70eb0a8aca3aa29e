"""Competing CPU-bound programs, for timing sample() on a busy machine (a scanner-side workstation
runs other programs): `busy(k)` keeps k programs busy on every usable core while its block runs,
one process per core each, which is what a multi-threaded CPU-bound program amounts to."""
from __future__ import annotations

import multiprocessing
import os
import time
from contextlib import contextmanager

SETTLE_S = 1.0  # the competitors reach full speed before timing starts
LIFETIME_S = 3600  # a competitor orphaned by a killed parent still stops


def burn(stop_at: float) -> None:
    """Pure Python arithmetic until `stop_at`: a CPU-bound thread that never sleeps."""
    x = 0
    while time.time() < stop_at:
        for i in range(10_000):
            x = (x + i * i) % 1_000_003


@contextmanager
def busy(programs: int):
    """`programs` competing programs on every core of this process's affinity, stopped on exit."""
    # fork: the competitors run only burn(), never torch, and need not re-import anything.
    context = multiprocessing.get_context("fork")
    rivals = [context.Process(target=burn, args=(time.time() + LIFETIME_S,), daemon=True)
              for _ in range(programs * len(os.sched_getaffinity(0)))]
    for rival in rivals:
        rival.start()
    try:
        time.sleep(SETTLE_S if rivals else 0.0)
        yield
    finally:
        for rival in rivals:
            rival.kill()
        for rival in rivals:
            rival.join()
