"""One case of a batch, end to end: read it, segment it, write its results whole to its folder
(ldseg_rt.io.results), and the `--continue` rule. `python -m ldseg_rt segment` runs this per
case in one process and the Ray actors of ldseg_rt.distributed run the very same function, so a
case gives the same bytes wherever it runs for the same seed, backend and precision.

A case's seed is its own: the one given, or, without one, a fresh one (drawn by the Segmenter
in one process; by the Ray driver before any actor sees the case, so that a retry reuses it)
that result.json records; never one that depends on the worker or on the order of the cases.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LdsegError
from .io.cases import Case, read_case
from .io.results import SIDECAR, algorithm_identity, default_formats, is_complete, reproduction_record, write_case
from .io.volume import Volume

# The stages a case's time is split into: reading, the Segmenter's own stages, writing.
STAGES = ("read", "preprocess", "encode", "sample", "decode", "postprocess", "write")


@dataclass(frozen=True)
class SegmentOptions:
    """How every case of a batch is segmented and written (`segment`'s flags)."""
    n: int = 16
    steps: int | None = None
    axis: int | None = None  # slicing axis of volumes (None: the model's or the through-plane axis)
    max_batch: int = 8  # slices per batched pass
    samples: bool = False  # also write the n samples
    formats: tuple[str, ...] | None = None  # None: default_formats of the case's kind
    progress: bool = True  # a progress bar over a volume's slice batches


@dataclass
class CaseOutcome:
    """What became of one case."""
    case: str
    status: str  # 'ok', 'failed' or 'skipped' (complete already)
    seconds: float
    detail: str  # the output folder, or why the case failed or was skipped
    seed: int | None = None  # the seed its results were made with (None: failed before one was drawn)
    outputs: dict = field(default_factory=dict)  # output file name -> sha256, as result.json records them
    timings: dict = field(default_factory=dict)  # ms per stage (STAGES)
    worker: str | None = None  # where it ran (host:pid), where a batch runs in several processes


def _segment(seg, data, options: SegmentOptions, seed):
    if isinstance(data, Volume):
        return seg.segment_volume(data, n=options.n, axis=options.axis, seed=seed, steps=options.steps,
                                  max_batch=options.max_batch, return_samples=options.samples,
                                  progress=options.progress)
    return seg.sample(data, n=options.n, steps=options.steps, seed=seed, return_samples=options.samples)


def read_record(folder) -> dict:
    """A finished case's result.json ({} where it cannot be read)."""
    try:
        return json.loads((Path(folder) / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}


def segment_case(seg, case: Case, folder, options: SegmentOptions, model: str, seed: int | None = None,
                 rule=None, algorithm: tuple[str, str] | None = None) -> CaseOutcome:
    """Read, segment and write one case to `folder` (replaced whole, atomically). A case that
    fails with an ldseg_rt error or an OSError (unreadable, not a case, bad values, disk) is
    an outcome 'failed' naming why, and nothing of it is left in `folder`. model: the model as
    the user named it (recorded in result.json); rule: the DICOM series selection rule."""
    folder = Path(folder)
    start = time.perf_counter()
    timings = {}
    try:
        data = read_case(case, rule)
        timings["read"] = (time.perf_counter() - start) * 1e3
        result = _segment(seg, data, options, seed)
        volume = isinstance(data, Volume)
        sidecar = {"case": case.name, "input": str(case.path), "model": model,
                   **reproduction_record(seg, result, options.n, options.steps,
                                         data.array.shape if volume else data.shape)}
        chosen = options.formats or default_formats(volume, volume and isinstance(data.source, list))
        written = time.perf_counter()
        write_case(folder, result, chosen, seg.class_names, sidecar, algorithm or algorithm_identity(seg))
        timings["write"] = (time.perf_counter() - written) * 1e3
    except (LdsegError, OSError) as e:
        return CaseOutcome(case.name, "failed", time.perf_counter() - start, str(e), seed=seed, timings=timings)
    timings.update({k: v for k, v in result.timings.items() if k != "total"})
    return CaseOutcome(case.name, "ok", time.perf_counter() - start, str(folder), seed=result.seed,
                       outputs=read_record(folder).get("outputs", {}), timings=timings)


def finished(folder) -> bool:
    """The `--continue` rule: a case whose folder holds its result.json is finished (folders are
    only ever renamed into place whole)."""
    return is_complete(Path(folder))


def skipped_outcome(case: Case, record: dict) -> CaseOutcome:
    """The outcome of a case `--continue` leaves alone, with the seed and outputs its
    result.json (`record`) holds."""
    return CaseOutcome(case.name, "skipped", 0.0, "complete already (--continue)", seed=record.get("seed"),
                       outputs=record.get("outputs", {}))
