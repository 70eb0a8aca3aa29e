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
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..errors import BackendError, InvalidArgumentError, ModelLoadError
from ..io.cases import find_cases
from ..options import EngineOptions, RayOptions, SegmentOptions
from ..seeds import fresh_seed
from ..workflow import STAGES, CaseOutcome, skipped_outcome
from .store import open_output
from .worker import CaseWorker

log = logging.getLogger(__name__)

MANIFEST = "manifest"  # OUT/manifest.json and OUT/manifest.csv


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


def _sizing(resources: dict, todo: int, cluster: RayOptions) -> tuple[int, float, float]:
    """(actors, CPUs and GPUs per actor) that the cluster holds now; an explicit request that it
    cannot hold is refused rather than left waiting for resources that never come."""
    have_cpus, have_gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    cpus = 1.0 if cluster.cpus_per_worker is None else float(cluster.cpus_per_worker)
    gpus = (1.0 if have_gpus >= 1 else 0.0) if cluster.gpus_per_worker is None else float(cluster.gpus_per_worker)
    if cpus + gpus == 0:
        raise InvalidArgumentError(f"each worker needs some CPU or GPU: got {cpus:g} CPU and {gpus:g} GPU")
    fits = min(int(have_cpus // cpus) if cpus else 1 << 30, int(have_gpus // gpus) if gpus else 1 << 30)
    workers = max(1, min(fits, todo)) if cluster.workers is None else cluster.workers
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


def segment_on_ray(inputs, model: str, out, *, options: SegmentOptions | None = None,
                   engine: EngineOptions | None = None, cluster: RayOptions | None = None, resume: bool = False,
                   worker=CaseWorker, on_case=None) -> RayBatchReport:
    """Segment the cases `inputs` name (as `segment` does, with SegmentOptions and
    EngineOptions) on Ray Data actors (RayOptions: which cluster, how many actors, what each
    reserves), each writing its cases to `out` (a folder every node sees, or a pyarrow file
    system URI), and write out/manifest.json and .csv. resume: leave the finished cases alone
    (`--continue`). `on_case(outcome)` is called in the driver as each case comes in.
    `worker`: the actor class (CaseWorker or a subclass)."""
    options, engine = SegmentOptions.of(options), EngineOptions.of(engine)
    cluster = RayOptions.of(cluster)
    ray = import_ray()
    started = time.perf_counter()
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
    seeds = {c.name: options.seed if options.seed is not None else fresh_seed() for c in todo}

    import torch
    threads = cluster.threads_per_worker or torch.get_num_threads()
    own, where = _start_ray(ray, cluster.address, cluster.init_options) if todo else (False, "no Ray (nothing to run)")
    ray_started = time.perf_counter()
    run = _Run(ray, worker, model, output, options, engine, cluster, threads, where)
    interrupted = False
    try:
        try:
            if todo:
                run.sizing = _sizing(ray.cluster_resources(), len(todo), cluster)
                _run(run, todo, seeds, len(cases), outcomes, on_case)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        finished_at = time.perf_counter()
        if own:
            ray.shutdown()
    _account_for_missing(cases, outcomes, output, seeds, cluster.retries, interrupted)
    ordered = [outcomes[c.name] for c in cases]
    summary = _summary(ordered, run, started, ray_started, finished_at)
    summary["interrupted"] = interrupted
    manifest = _write_manifest(output, ordered, {c.name: str(c.path) for c in cases}, summary)
    if interrupted:
        raise KeyboardInterrupt
    return RayBatchReport(ordered, summary, manifest)


@dataclass
class _Run:
    """What one batch on Ray was run with, and what came back."""
    ray: object
    worker: type
    model: str
    output: object
    options: SegmentOptions
    engine: EngineOptions
    cluster: RayOptions
    threads: int
    where: str  # the cluster, in words
    sizing: tuple = (0, 0.0, 0.0)  # actors, CPUs and GPUs per actor
    rows: dict = field(default_factory=dict)  # case -> (outcome, model load seconds, worker ready seconds)


def _account_for_missing(cases, outcomes: dict, output, seeds: dict, retries: int, interrupted: bool) -> None:
    """An outcome for every case no answer came back for: written by an actor whose answer was
    lost, never run (interrupted), or lost with its actor on every try."""
    missing = [c.name for c in cases if c.name not in outcomes]
    written = output.finished(missing) if missing else set()
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


def _run(run: _Run, todo, seeds, total, outcomes, on_case) -> None:
    """The dataset of the cases to run, through the actor pool; each row logged as it comes."""
    n_workers, cpus, gpus = run.sizing
    log.info("%d case(s), %d to run, with %s on %s: %d worker(s) of %g CPU, %g GPU, %d torch thread(s) -> %s",
             total, len(todo), run.model, run.where, n_workers, cpus, gpus, run.threads, run.output)
    if cpus and run.threads > cpus:
        log.info("each worker runs %d threads on %g reserved CPU(s): the thread count of a single process, which "
                 "keeps results bit-identical to one (--threads-per-worker trades that for throughput)", run.threads,
                 cpus)
    # Absolute paths: an actor's working folder is not the driver's (nor, on another node, its machine).
    items = [{"index": i, "name": c.name, "path": os.path.abspath(c.path), "kind": c.kind,
              "seed": str(seeds[c.name])} for i, c in enumerate(todo)]
    with _data_context(run.ray, run.cluster.progress):  # a dataset takes the context as it is when it is made
        rows_in = iter(_dataset(run, items).iter_rows())
        begun = time.perf_counter()
        try:
            for row in rows_in:
                outcome = _outcome(row)
                if outcome.case in run.rows:  # Ray returns a task's result once; say so loudly if it ever did not
                    log.warning("%s: a second result came in (from %s); the case's folder holds one of them",
                                outcome.case, outcome.worker)
                # how long the worker took to start (scheduling, imports, model load), as the driver sees it
                ready = time.perf_counter() - begun - outcome.seconds
                run.rows[outcome.case] = (outcome, float(row["load_seconds"]), ready)
                outcomes[outcome.case] = outcome
                _log_case(len(run.rows), len(todo), outcome)
                if on_case is not None:
                    on_case(outcome)
        finally:
            close = getattr(rows_in, "close", None)
            if close is not None:
                close()  # stops the dataset's execution (its actors) now, not when collected


def _dataset(run: _Run, items: list[dict]):
    """The cases as a dataset of one case per block, mapped through a pool of `run.worker` actors."""
    n_workers, cpus, gpus = run.sizing
    model = run.model if run.model.startswith("builtin:") else os.path.abspath(run.model)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for an actor's task retries yet, only the deprecated **ray_remote_args.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return run.ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            run.worker, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"model": model, "out": str(run.output), "options": run.options,
                                   "engine": run.engine, "threads": run.threads},
            # one case at a time per actor: a dead actor takes only its own case with it
            compute=run.ray.data.ActorPoolStrategy(size=n_workers, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=run.cluster.retries,
            # More threads than reserved CPUs: OpenMP threads that wait by spinning would steal the cores of
            # the other actors (several times slower on a full node); waiting passively they do not.
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}} if cpus and run.threads > cpus else None)


def _log_case(k: int, total: int, outcome: CaseOutcome) -> None:
    if outcome.status == "failed":
        log.error("[%d/%d] %s: failed on %s: %s", k, total, outcome.case, outcome.worker, outcome.detail)
    else:
        log.info("[%d/%d] %s: done in %.1f s on %s -> %s", k, total, outcome.case, outcome.seconds, outcome.worker,
                 outcome.detail)


def _summary(outcomes, run: _Run, started, ray_started, finished_at) -> dict:
    ok = [o for o in outcomes if o.status == "ok"]
    wall = finished_at - started
    stage = {k: round(sum(o.timings.get(k, 0.0) for o in ok) / 1e3, 3) for k in STAGES}
    loads, starts = {}, {}
    for outcome, load_seconds, ready in run.rows.values():  # in the order they came in
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
        "workers": run.sizing[0], "cpus_per_worker": run.sizing[1], "gpus_per_worker": run.sizing[2],
        "threads_per_worker": run.threads, "cluster": run.where, "ray_version": run.ray.__version__,
        "driver": platform.node(), "model": run.model,
        "seed": run.options.seed if run.options.seed is not None else "drawn per case",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run.options).items()},
        "engine": asdict(run.engine),
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

