"""One case, end to end: read it, segment it, write its results whole to its folder, record how
to reproduce them. `python -m ldseg_rt segment`, the Ray actors (ldseg_rt.distributed) and the
DICOM node (ldseg_rt.serve) run `run_case`; the HTTP endpoint runs its array part,
`segment_data`. So a case gives the same bytes on every path for the same seed, backend and
precision.

A case's seed is its own: the one its options carry, or, without one, a fresh one drawn once
(by the Segmenter in one process; by the Ray driver before any actor sees the case, so that a
retry reuses it) that result.json records; never one that depends on the worker or the order.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LdsegError, SeriesNotSelectedError
from .io.cases import Case, read_case
from .io.results import SIDECAR, default_formats, is_complete, write_case
from .io.volume import Volume
from .options import SegmentOptions, VolumeOptions

# The stages a case's time is split into: reading, the Segmenter's own stages, writing.
STAGES = ("read", "preprocess", "encode", "sample", "decode", "postprocess", "write")


@dataclass
class CaseOutcome:
    """What became of one case."""
    case: str
    status: str  # 'ok', 'failed', or 'skipped' (complete already, or no series matches the rule)
    seconds: float
    detail: str  # the output folder, or why the case failed or was skipped
    seed: int | None = None  # the seed its results were made with (None: failed before one was drawn)
    outputs: dict = field(default_factory=dict)  # output file name -> sha256, as result.json records them
    timings: dict = field(default_factory=dict)  # ms per stage (STAGES)
    worker: str | None = None  # where it ran (host:pid), where a batch runs in several processes
    retryable: bool = False  # failed for the machine's sake (an OSError: disk, network), not the case's


def segment_data(segmenter, data, options: VolumeOptions):
    """The array part of a case: a Volume through segment_volume, a 2-D image through sample."""
    if isinstance(data, Volume):
        return segmenter.segment_volume(data, options=options)
    return segmenter.sample(data, options=options)


def algorithm_identity(segmenter) -> tuple[str, str]:
    """The algorithm (name, version) that DICOM outputs name as their producer."""
    from . import __version__
    return "ldseg_rt " + segmenter.config.name, __version__


def reproduction_record(segmenter, result, options: VolumeOptions, input_shape) -> dict:
    """What result.json records so that a result can be reproduced: the model and its bytes'
    sha256, seed, n, steps, backend, precision, slicing axis, timings, warnings, versions."""
    from .bundle import package_versions
    return {"model_name": segmenter.model_name, "model_sha256": segmenter.model_sha256, "seed": result.seed,
            "n": getattr(result, "n", options.n), "steps": options.steps or segmenter.config.steps,
            "backend": segmenter.backend_name, "precision": segmenter.precision,
            "axis": getattr(result, "axis", None), "input_shape": list(input_shape),
            "timings_ms": {k: round(v, 1) for k, v in result.timings.items()}, "warnings": result.warnings,
            "versions": package_versions()}


def read_record(folder) -> dict:
    """A finished case's result.json ({} where it cannot be read)."""
    try:
        return json.loads((Path(folder) / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}


def run_case(segmenter, case: Case, folder, options: SegmentOptions, *, model: str,
             record: dict | None = None) -> CaseOutcome:
    """Read, segment and write one case to `folder` (replaced whole, atomically). A case that
    fails with an ldseg_rt error or an OSError (unreadable, not a case, bad values, disk) is
    an outcome 'failed' naming why (retryable where the machine, not the case, failed), and nothing of it is left in `folder`; a DICOM
    folder whose series the rule does not pick is 'skipped'. model: the model as the user
    named it; record: more fields for result.json (what the caller knows of the case)."""
    start = time.perf_counter()
    timings = {}
    try:
        data = read_case(case, options.series_rule())
        timings["read"] = (time.perf_counter() - start) * 1e3
        result = segment_data(segmenter, data, options)
        volume = isinstance(data, Volume)
        sidecar = {"case": case.name, "input": str(case.path), "model": model, **(record or {}),
                   **reproduction_record(segmenter, result, options, data.array.shape if volume else data.shape)}
        chosen = options.formats or default_formats(volume, volume and isinstance(data.source, list))
        written = time.perf_counter()
        write_case(folder, result, chosen, segmenter.class_names, sidecar, algorithm_identity(segmenter))
        timings["write"] = (time.perf_counter() - written) * 1e3
    except SeriesNotSelectedError as e:
        return CaseOutcome(case.name, "skipped", time.perf_counter() - start, str(e), seed=options.seed)
    except (LdsegError, OSError) as e:
        return CaseOutcome(case.name, "failed", time.perf_counter() - start, str(e), seed=options.seed,
                           timings=timings, retryable=isinstance(e, OSError))
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


def run_cases(segmenter, cases: list[Case], out: Path, options: SegmentOptions, *, model: str,
              resume: bool = False, on_case=None) -> list[CaseOutcome]:
    """Every case into out/<case>/, one after another in this process; with resume, the
    finished ones left alone. on_case(outcome) as each case ends."""
    outcomes = []
    for case in cases:
        folder = Path(out) / case.name
        if resume and finished(folder):
            outcome = skipped_outcome(case, read_record(folder))
        else:
            outcome = run_case(segmenter, case, folder, options, model=model)
        outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome)
    return outcomes
