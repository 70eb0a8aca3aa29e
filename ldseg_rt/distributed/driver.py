"""The driver of a batch on Ray Data: `python -m ldseg_rt segment INPUT... -m MODEL -o OUT --ray`.

The cases (ldseg_rt.io.cases: files, folders, CSV lists) become a dataset of one case per block;
`map_batches` runs them on a pool of CaseWorker actors (one loaded Segmenter each) with the CPUs
and GPUs each actor reserves; the actors write every case to OUT themselves and return one row
per case, which the driver logs as it comes and gathers into OUT/manifest.json and .csv.

Nothing lost, nothing twice: every case's seed is fixed here before any actor sees it (the one
given, or one drawn per case), never by a worker or by the order; an actor that dies has its
case retried by Ray on a live or restarted actor, and the retry writes the same bytes to the
same OUT/<case>/, replacing whatever the dead one left (ldseg_rt.io.atomic); a case whose
actor dies on every try is reported lost, not retried forever; a rerun with --continue
skips the cases whose result.json is in OUT (`segment`'s rule) and runs the rest.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import secrets
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..errors import BackendError, InvalidArgumentError, ModelLoadError
from ..workflow import STAGES, CaseOutcome, SegmentOptions, skipped_outcome
from ..io.cases import find_cases
from .store import open_output
from .worker import CaseWorker

log = logging.getLogger(__name__)

MANIFEST = "manifest"  # OUT/manifest.json and OUT/manifest.csv
DEFAULT_RETRIES = 3  # tries of a case after the first whose actor died


def import_ray():
    """Ray and Ray Data, or a clear error saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendError("--ray needs Ray Data, an optional extra: pip install 'ldseg_rt[ray]' "
                           f"(or pip install 'ray[data]'); importing it failed: {e}") from None
    return ray


@dataclass
class RayBatchReport:
    """What `segment_on_ray` returns: every case's outcome in the order of the case list, the
    run's summary (throughput, per-stage time, workers) and where the manifest was written."""
    outcomes: list[CaseOutcome]
    summary: dict = field(default_factory=dict)
    manifest: str | None = None

    def summary_lines(self) -> list[str]:
        s = self.summary
        lines = [f"Ray: {s['workers']} worker(s) of {s['cpus_per_worker']:g} CPU, {s['gpus_per_worker']:g} GPU, "
                 f"{s['threads_per_worker']} thread(s) on {s['cluster']}; {s['ok']} case(s) segmented in "
                 f"{s['wall_seconds']:.1f} s ({s['cases_per_hour']:.0f} cases/hour; Ray start "
                 f"{s['ray_start_seconds']:.1f} s, worker start mean {s['worker_start_seconds_mean']:.1f} s of which "
                 f"model load {s['model_load_seconds_mean']:.1f} s)"]
        total = sum(s["stage_seconds"].values())
        if total > 0:
            lines.append("time per stage, summed over cases: " + ", ".join(
                f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in s["stage_seconds"].items()))
        if self.manifest:
            lines.append(f"manifest: {self.manifest} (and .csv)")
        return lines


def _check_model(model: str) -> None:
    """Refuse, before starting anything, a model that no worker could load: a missing file
    (the path must be the same on every node) or an unknown built-in."""
    if model.startswith("builtin:"):
        from ..segmenter import BUILTIN_DIR  # the models the package ships
        shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.pt"))
        if model.split(":", 1)[1] not in shipped:
            raise ModelLoadError(f"unknown built-in model {model!r}; built-in: {', '.join(shipped)}")
    elif not os.path.exists(model):
        raise ModelLoadError(f"model {model!r} does not exist (every node reads it at the same path)")


def _start_ray(ray, address: str | None, init_options: dict | None) -> tuple[bool, str]:
    """Connect to Ray: the running one of this process, the cluster at `address` (or
    RAY_ADDRESS; 'auto': the one `ray start` started on this machine), else a new local cluster
    started here, even where `ray start` left one (or a stale record of one) on this machine.
    (whether this call started it, where)"""
    if ray.is_initialized():
        return False, "the Ray of this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = dict(init_options or {})
    if address is None:
        options.setdefault("include_dashboard", False)
    try:
        ray.init(address=address or "local", **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = (" (a cluster with token authentication, as `ray start --head` of Ray 2.60 makes by default, is "
                    "joined with RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise InvalidArgumentError(f"cannot {'join the Ray cluster at ' + repr(address) if address else 'start Ray'}: "
                                   f"{e}{hint}") from e
    return True, f"the Ray cluster at {address}" if address else "a local Ray cluster"


def _sizing(resources: dict, todo: int, workers, cpus, gpus) -> tuple[int, float, float]:
    """(actors, CPUs and GPUs per actor) that the cluster holds now; an explicit request that it
    cannot hold is refused rather than left waiting for resources that never come."""
    have_cpus, have_gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    cpus = 1.0 if cpus is None else float(cpus)
    gpus = (1.0 if have_gpus >= 1 else 0.0) if gpus is None else float(gpus)
    if cpus < 0 or gpus < 0 or cpus + gpus == 0:
        raise InvalidArgumentError(f"each worker needs some CPU or GPU: got {cpus:g} CPU and {gpus:g} GPU")
    fits = min(int(have_cpus // cpus) if cpus else 1 << 30, int(have_gpus // gpus) if gpus else 1 << 30)
    if workers is None:
        workers = max(1, min(fits, todo))
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"--workers must be a positive integer, got {workers!r}")
    if workers > fits:
        raise InvalidArgumentError(f"{workers} worker(s) of {cpus:g} CPU and {gpus:g} GPU do not fit the cluster's "
                                   f"{have_cpus:g} CPU and {have_gpus:g} GPU")
    return min(workers, max(todo, 1)), cpus, gpus


@contextmanager
def _data_context(ray, progress: bool):
    """Ray Data settings for this run, restored after: progress bars on or off, and a case
    whose actor died on every try dropped (and reported lost here) rather than failing all."""
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.max_errored_blocks
    context.enable_progress_bars, context.max_errored_blocks = progress, -1
    try:
        yield
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved


def _outcome(row: dict) -> CaseOutcome:
    seed = str(row["seed"])
    return CaseOutcome(str(row["case"]), str(row["status"]), float(row["seconds"]), str(row["detail"]),
                       seed=int(seed) if seed else None, outputs=json.loads(row["outputs"]),
                       timings=json.loads(row["timings"]), worker=str(row["worker"]))


def segment_on_ray(inputs, model: str, out, *, options: SegmentOptions = SegmentOptions(), seed: int | None = None,
                   resume: bool = False, select: str | None = None, backend: str = "auto", precision: str = "auto",
                   address: str | None = None, workers: int | None = None, cpus_per_worker: float | None = None,
                   gpus_per_worker: float | None = None, threads_per_worker: int | None = None,
                   retries: int = DEFAULT_RETRIES, progress: bool = True, init_options: dict | None = None,
                   worker=CaseWorker, on_case=None) -> RayBatchReport:
    """Segment the cases `inputs` name (as `segment` does) on Ray Data actors, each writing its
    cases to `out` (a folder every node sees, or a pyarrow file system URI), and write
    out/manifest.json and .csv. `address`: a cluster to join (None: RAY_ADDRESS, else a local
    cluster started here with `init_options` and shut down after; a Ray this process already
    runs is used as it is). `workers`: actors (default: as many as the cluster holds), each
    reserving `cpus_per_worker` (1) and `gpus_per_worker` (1 where the cluster has GPUs, else 0)
    and running torch on `threads_per_worker` threads (default: this process's count, so that
    the results are bit-identical to a single-process run). `retries`: how often a case whose
    actor died is tried again. `on_case(outcome)` is called in the driver as each case comes in.
    `worker`: the actor class (CaseWorker or a subclass)."""
    ray = import_ray()
    started = time.perf_counter()
    if select:
        from ..io.dicom_series import SeriesRule
        SeriesRule.parse(select)  # refused here rather than by every worker
    if seed is not None:
        from ..segmenter import SEED_LIMIT
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidArgumentError(f"retries must be a non-negative integer, got {retries!r}")
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool) or
                                           not isinstance(threads_per_worker, int) or threads_per_worker < 1):
        raise InvalidArgumentError(f"--threads-per-worker must be a positive integer, got {threads_per_worker!r}")
    _check_model(model)
    output = open_output(out)
    cases = find_cases(inputs)
    done = output.finished([c.name for c in cases])
    outcomes: dict[str, CaseOutcome] = {}
    if resume:
        for case in cases:
            if case.name in done:
                outcomes[case.name] = skipped_outcome(case, output.record(case.name))
    elif done:
        log.warning("%d case(s) in %s have results already: they are segmented again and replaced "
                    "(--continue keeps them)", len(done), output)
    todo = [c for c in cases if c.name not in outcomes]
    # Each case's seed, fixed before any worker sees it: a retry on another actor draws nothing new.
    seeds = {c.name: seed if seed is not None else secrets.randbits(63) for c in todo}

    import torch
    threads = threads_per_worker or torch.get_num_threads()
    own, cluster = _start_ray(ray, address, init_options) if todo else (False, "no Ray (nothing to run)")
    ray_started = time.perf_counter()
    sizing = (0, 0.0, 0.0)
    rows = {}
    interrupted = False
    try:
        try:
            if todo:
                sizing = _sizing(ray.cluster_resources(), len(todo), workers, cpus_per_worker, gpus_per_worker)
                _run(ray, worker, todo, seeds, sizing, threads, model, output, options, backend, precision, select,
                     retries, progress, cluster, len(cases), rows, outcomes, on_case)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        finished_at = time.perf_counter()
        if own:
            ray.shutdown()
    missing = [c.name for c in cases if c.name not in outcomes]
    written = output.finished(missing) if missing else set()  # finished by an actor whose answer never came
    for name in missing:
        if name in written:
            record = output.record(name)
            outcomes[name] = CaseOutcome(name, "ok", 0.0, output.location(name), seed=record.get("seed"),
                                         outputs=record.get("outputs", {}), timings={})
            continue
        reason = ("not run: the batch was interrupted (rerun with --continue)" if interrupted else
                  f"lost: its worker died on each of {retries + 1} tries (see the Ray logs)")
        outcomes[name] = CaseOutcome(name, "failed", 0.0, reason, seed=seeds.get(name))
        if not interrupted:
            log.error("%s: %s", name, reason)
    ordered = [outcomes[c.name] for c in cases]
    summary = _summary(ordered, rows, sizing, threads, cluster, model, options, seed, started, ray_started,
                       finished_at, ray)
    summary["interrupted"] = interrupted
    manifest = _write_manifest(output, ordered, {c.name: str(c.path) for c in cases}, summary)
    if interrupted:
        raise KeyboardInterrupt
    return RayBatchReport(ordered, summary, manifest)


def _run(ray, worker, todo, seeds, sizing, threads, model, output, options, backend, precision, select, retries,
         progress, cluster, total, rows, outcomes, on_case) -> None:
    """The dataset of the cases to run, through the actor pool; each row logged as it comes."""
    n_workers, cpus, gpus = sizing
    log.info("%d case(s), %d to run, with %s on %s: %d worker(s) of %g CPU, %g GPU, %d torch thread(s) -> %s",
             total, len(todo), model, cluster, n_workers, cpus, gpus, threads, output)
    if cpus and threads > cpus:
        log.info("each worker runs %d threads on %g reserved CPU(s): the thread count of a single process, which "
                 "keeps results bit-identical to one (--threads-per-worker trades that for throughput)", threads, cpus)
    # Absolute paths: an actor's working folder is not the driver's (nor, on another node, its machine).
    items = [{"index": i, "name": c.name, "path": os.path.abspath(c.path), "kind": c.kind,
              "seed": str(seeds[c.name])} for i, c in enumerate(todo)]
    if not model.startswith("builtin:"):
        model = os.path.abspath(model)
    with _data_context(ray, progress):  # a dataset takes the context as it is when it is made
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for an actor's task retries yet, only the deprecated **ray_remote_args.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                worker, batch_size=1, batch_format="numpy",
                fn_constructor_kwargs={"model": model, "out": str(output), "options": options, "backend": backend,
                                       "precision": precision, "select": select, "threads": threads},
                # one case at a time per actor: a dead actor takes only its own case with it
                compute=ray.data.ActorPoolStrategy(size=n_workers, max_tasks_in_flight_per_actor=1),
                num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=retries,
                # More threads than reserved CPUs: OpenMP threads that wait by spinning would steal the cores of
                # the other actors (several times slower on a full node); waiting passively they do not.
                runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}} if cpus and threads > cpus else None)
        rows_in = iter(dataset.iter_rows())
        begun = time.perf_counter()
        try:
            for row in rows_in:
                outcome = _outcome(row)
                if outcome.case in rows:  # Ray returns a task's result once; say so loudly if it ever did not
                    log.warning("%s: a second result came in (from %s); the case's folder holds one of them",
                                outcome.case, outcome.worker)
                # how long the worker took to start (scheduling, imports, model load), as the driver sees it
                ready = time.perf_counter() - begun - outcome.seconds
                rows[outcome.case] = (outcome, float(row["load_seconds"]), ready)
                outcomes[outcome.case] = outcome
                _log_case(len(rows), len(todo), outcome)
                if on_case is not None:
                    on_case(outcome)
        finally:
            close = getattr(rows_in, "close", None)
            if close is not None:
                close()  # stops the dataset's execution (its actors) now, not when collected


def _log_case(k: int, total: int, outcome: CaseOutcome) -> None:
    if outcome.status == "failed":
        log.error("[%d/%d] %s: failed on %s: %s", k, total, outcome.case, outcome.worker, outcome.detail)
    else:
        log.info("[%d/%d] %s: done in %.1f s on %s -> %s", k, total, outcome.case, outcome.seconds, outcome.worker,
                 outcome.detail)


def _summary(outcomes, rows, sizing, threads, cluster, model, options, seed, started, ray_started, finished_at,
             ray) -> dict:
    ok = [o for o in outcomes if o.status == "ok"]
    wall = finished_at - started
    stage = {k: round(sum(o.timings.get(k, 0.0) for o in ok) / 1e3, 3) for k in STAGES}
    loads, starts = {}, {}
    for outcome, load_seconds, ready in rows.values():  # in the order they came in
        loads.setdefault(outcome.worker, load_seconds)
        starts.setdefault(outcome.worker, ready)
    return {
        "cases": len(outcomes), "ok": len(ok), "failed": sum(o.status == "failed" for o in outcomes),
        "skipped": sum(o.status == "skipped" for o in outcomes),
        "wall_seconds": round(wall, 3), "ray_start_seconds": round(ray_started - started, 3),
        "run_seconds": round(finished_at - ray_started, 3),
        "cases_per_hour": round(3600 * len(ok) / wall, 1) if wall > 0 else 0.0,
        "stage_seconds": stage,
        "worker_processes": len(starts),  # more than workers: an actor died and was restarted
        # from the dataset's start to a worker's first case begun (scheduling, imports, model load), and the load
        "worker_start_seconds_mean": round(sum(starts.values()) / len(starts), 3) if starts else 0.0,
        "model_load_seconds_mean": round(sum(loads.values()) / len(loads), 3) if loads else 0.0,
        "workers": sizing[0], "cpus_per_worker": sizing[1], "gpus_per_worker": sizing[2],
        "threads_per_worker": threads, "cluster": cluster, "ray_version": ray.__version__,
        "driver": platform.node(), "model": model, "seed": seed if seed is not None else "drawn per case",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
    }


def _write_manifest(output, outcomes, inputs: dict, summary: dict) -> str | None:
    """OUT/manifest.json (the summary and every case) and OUT/manifest.csv (a row per case)."""
    cases = [{"case": o.case, "status": o.status, "input": inputs[o.case],
              "output": output.location(o.case) if o.status != "failed" else None,
              "outputs": o.outputs, "seed": o.seed, "seconds": round(o.seconds, 3),
              "timings_ms": {k: round(v, 1) for k, v in o.timings.items()}, "worker": o.worker,
              "reason": o.detail if o.status != "ok" else None} for o in outcomes]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["case", "status", "seed", "seconds", "worker", "output", "outputs_sha256", "reason",
                     *(f"{k}_ms" for k in STAGES)])
    for c in cases:
        writer.writerow([c["case"], c["status"], "" if c["seed"] is None else c["seed"], c["seconds"],
                         c["worker"] or "", c["output"] or "",
                         ";".join(f"{k}={v}" for k, v in sorted(c["outputs"].items())), c["reason"] or "",
                         *(c["timings_ms"].get(k, "") for k in STAGES)])
    try:
        path = output.write_text(f"{MANIFEST}.json", json.dumps({"summary": summary, "cases": cases}, indent=2) + "\n")
        output.write_text(f"{MANIFEST}.csv", text.getvalue())
    except OSError as e:
        log.error("cannot write the manifest to %s: %s", output, e)
        return None
    return path

