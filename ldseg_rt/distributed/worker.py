"""The stateful class Ray Data runs as an actor pool (`map_batches(CaseWorker, ...)`): each actor
loads the model once, in __init__, and then takes cases one at a time through the per-case
function `segment` runs (ldseg_rt.workflow.run_case), writing each case's results to OUT
itself. Imports nothing of Ray: the driver (ldseg_rt.distributed.driver) hands it to Ray.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import LdsegError
from ..io.cases import Case
from ..options import EngineOptions, SegmentOptions
from ..workflow import CaseOutcome, run_case
from .store import open_output

log = logging.getLogger(__name__)

# The columns of the rows an actor returns, one row per case.
COLUMNS = ("index", "case", "status", "seconds", "detail", "seed", "outputs", "timings", "worker", "threads",
           "load_seconds")


class CaseWorker:
    """One actor: one Segmenter, loaded once, and the cases Ray Data hands it.

    A batch holds rows {index, name, path, kind, seed}; the answer holds one row per case
    (COLUMNS). The seed of each row was fixed by the driver, so a case retried on another actor
    (its first actor died) gives the same bytes. A case that fails is a row with status
    'failed' and the reason; nothing the actor does for one case stops the next.
    """

    def __init__(self, model: str, out: str, options: SegmentOptions, engine: EngineOptions | None = None,
                 threads: int | None = None):
        start = time.perf_counter()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.model, self.options = model, options
        self.segmenter = self.error = None
        import torch
        if threads:
            # Ray sets OMP_NUM_THREADS to the actor's CPUs; the thread count can change a float's last bit
            # (torch's CPU GroupNorm splits its sums by thread), so every actor uses the driver's count.
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        try:
            self.output = open_output(out)
        except (LdsegError, OSError) as e:  # OUT is not there, or not writable, on this node
            self.output, self.error = None, f"worker {self.worker} cannot write to {out}: {e}"
        try:
            from ..segmenter import Segmenter
            self.segmenter = Segmenter(model, options=engine)
        except (LdsegError, OSError) as e:
            self.error = self.error or f"worker {self.worker} cannot load model {model!r}: {e}"
        if self.error:
            log.error("%s", self.error)
        self.load_seconds = time.perf_counter() - start  # the model's load

    def __call__(self, batch: dict) -> dict:
        rows = []
        for index, name, path, kind, seed in zip(batch["index"], batch["name"], batch["path"], batch["kind"],
                                                 batch["seed"]):
            outcome = self.run(Case(str(name), Path(str(path)), str(kind)), int(seed) if str(seed) else None)
            rows.append(self.row(int(index), outcome))
        return {column: np.array([row[column] for row in rows], dtype=object if column in _TEXT else None)
                for column in COLUMNS}

    def run(self, case: Case, seed: int | None) -> CaseOutcome:
        """One case, written to OUT/<case>/; its outcome, whatever happens."""
        if self.error is not None:
            return CaseOutcome(case.name, "failed", 0.0, self.error, seed=seed)
        start = time.perf_counter()
        try:
            with self.output.case_folder(case.name) as folder:
                outcome = run_case(self.segmenter, case, folder, SegmentOptions.of(self.options, seed=seed),
                                   model=self.model)
        except OSError as e:  # the upload to an object store
            return CaseOutcome(case.name, "failed", time.perf_counter() - start,
                               f"cannot write the results to {self.output.location(case.name)}: {e}", seed=seed)
        except Exception as e:  # a bug, not the case's fault: reported as such, and the batch goes on
            log.exception("%s: unexpected error on %s", case.name, self.worker)
            return CaseOutcome(case.name, "failed", time.perf_counter() - start,
                               f"internal error ({type(e).__name__}: {e}); please report it", seed=seed)
        if outcome.status == "ok":
            outcome.detail = self.output.location(case.name)
        return outcome

    def row(self, index: int, outcome: CaseOutcome) -> dict:
        row = asdict(outcome)
        return {"index": index, "case": row["case"], "status": row["status"], "seconds": float(row["seconds"]),
                "detail": row["detail"], "seed": "" if row["seed"] is None else str(row["seed"]),
                "outputs": json.dumps(row["outputs"]), "timings": json.dumps(row["timings"]), "worker": self.worker,
                "threads": self.threads, "load_seconds": float(self.load_seconds)}


_TEXT = ("case", "status", "detail", "seed", "outputs", "timings", "worker")
