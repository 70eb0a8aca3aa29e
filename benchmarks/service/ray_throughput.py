"""Throughput of `python -m ldseg_rt segment` on one machine: the plain single-process command
against `--ray` with 1 and 2 workers (a local Ray started by the command itself, as a user
would run it), on the same synthetic study list with the same seed. Each run is a fresh
process, so every figure includes what a user waits for: Python and torch imports, model
load, and for Ray the cluster's start and the actors' start (the serial part). Checks that
every run wrote byte-identical outputs. Every run, the single process too, gets
OMP_WAIT_POLICY=PASSIVE unless --omp-spin: on a machine shared with other work, OpenMP threads
that spin while they wait make torch many times slower, which measures the neighbours rather
than ldseg_rt. Writes its section of benchmarks/RESULTS.md unless --no-write.

    python benchmarks/service/ray_throughput.py [--cases 16] [--size 64] [--depth 6] [-n 4]
        [--steps 15] [--threads-per-worker 1] [--rounds 2] [--json out.json]

--threads-per-worker adds a `--ray --workers 2 --threads-per-worker T` run: fewer torch
threads per actor than a single process uses (faster on a full node, but not bit-identical to
a single-process run, see the README).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ldseg_rt.bench.machine import cpu_model
from ldseg_rt.bench.report import format_markdown_table
from ldseg_rt.bench.script import parse_args, publish

HEADER = ["run", "wall s (all runs)", "cases/hour", "speed-up", "busy cases/hour", "mean s per case", "Ray start s",
          "worker start s (model load)", "outputs identical"]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_study(folder: Path, cases: int, size: int, depth: int) -> None:
    from ldseg_rt.data.phantoms import make_phantom
    folder.mkdir(parents=True)
    for i in range(cases):
        stack = np.stack([make_phantom(size, seed=100 * i + k)[0] for k in range(depth)], -1)
        nib.save(nib.Nifti1Image((400 * stack).astype(np.float32), np.diag([0.8, 0.8, 3.0, 1.0])),
                 folder / f"case{i:03d}.nii.gz")


def outputs(out: Path) -> dict:
    """Every case's output files and their sha256 (read from disk)."""
    return {f"{case.name}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest()
            for case in sorted(p for p in out.iterdir() if p.is_dir()) for f in sorted(case.iterdir())
            if f.name != "result.json"}


def run(name: str, study: Path, out: Path, flags: list[str], extra: list[str], env: dict) -> dict:
    command = [sys.executable, "-m", "ldseg_rt", "segment", str(study), "-m", "builtin:phantom", "-o", str(out),
               *flags, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    records = [json.loads((case / "result.json").read_text()) for case in sorted(out.iterdir()) if case.is_dir()]
    row = {"name": name, "wall_seconds": round(wall, 2), "cases": len(records),
           "cases_per_hour": round(3600 * len(records) / wall, 1),
           "case_seconds_mean": None, "outputs": outputs(out)}
    manifest = out / "manifest.json"
    if manifest.is_file():
        summary = json.loads(manifest.read_text())["summary"]
        cases = json.loads(manifest.read_text())["cases"]
        row.update({k: summary[k] for k in ("ray_start_seconds", "worker_start_seconds_mean", "model_load_seconds_mean",
                                            "workers", "threads_per_worker", "stage_seconds")})
        busy = {}  # per worker process: (cases, seconds busy with them)
        for c in cases:
            n, seconds = busy.get(c["worker"], (0, 0.0))
            busy[c["worker"]] = (n + 1, seconds + c["seconds"])
        seconds = [c["seconds"] for c in cases]
    else:
        stages = ("preprocess", "encode", "sample", "decode", "postprocess")
        row["stage_seconds"] = {k: round(sum(r["timings_ms"].get(k, 0.0) for r in records) / 1e3, 3) for k in stages}
        seconds = [r["timings_ms"]["total"] / 1e3 for r in records]  # the Segmenter's time; reading and writing aside
        busy = {"single": (len(seconds), sum(seconds))}
    row["case_seconds_mean"] = round(float(np.mean(seconds)), 3)
    # What a long run converges to, the fixed costs (imports, Ray and actor start) left out: each worker's cases
    # over the time it was busy with them, summed over the workers.
    row["busy_cases_per_hour"] = round(3600 * sum(n / t for n, t in busy.values() if t > 0), 1)
    return row


def table_row(r: dict) -> list[str]:
    ray_start = f"{r['ray_start_seconds']:.1f}" if "ray_start_seconds" in r else "-"
    worker = (f"{r['worker_start_seconds_mean']:.1f} ({r['model_load_seconds_mean']:.2f})"
              if "worker_start_seconds_mean" in r else "-")
    runs_text = ", ".join(f"{w:.1f}" for w in r["wall_seconds_all"])
    return [r["name"], f"{r['wall_seconds']:.1f} ({runs_text})", f"{r['cases_per_hour']:.0f}", f"{r['speedup']:.2f}",
            f"{r['busy_cases_per_hour']:.0f}", f"{r['case_seconds_mean']:.2f}", ray_start, worker,
            f"{'yes' if r['identical_to_single_process'] else 'NO'} ({r['output_files']} files)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="slice size of the synthetic volumes")
    parser.add_argument("--depth", type=int, default=6, help="slices per volume")
    parser.add_argument("-n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads-per-worker", type=int, help="also run 2 workers with this many threads each")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration, interleaved; the "
                                                                  "median is reported (the machine may be shared)")
    parser.add_argument("--omp-spin", action="store_true",
                        help="leave OpenMP's wait policy alone (by default every run, the single process too, gets "
                             "OMP_WAIT_POLICY=PASSIVE: on a machine others share, spinning threads make torch "
                             "many times slower, which would measure the neighbours, not ldseg_rt)")
    parser.add_argument("--json", help="write the figures here")
    args = parse_args(parser)
    import ray
    import torch

    flags = ["-n", str(args.n), "--steps", str(args.steps), "--seed", "0"]
    runs = [("single process", []), ("--ray, 1 worker", ["--ray", "--workers", "1"]),
            ("--ray, 2 workers", ["--ray", "--workers", "2"])]
    if args.threads_per_worker:
        runs.append((f"--ray, 2 workers, {args.threads_per_worker} thread(s) each",
                     ["--ray", "--workers", "2", "--threads-per-worker", str(args.threads_per_worker)]))
    conditions = {"cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs", "torch_threads": torch.get_num_threads(),
                  "ray": ray.__version__, "torch": torch.__version__, "load_average_before": load_average(),
                  "study": f"{args.cases} NIfTI volumes of {args.size}x{args.size}x{args.depth}, builtin:phantom, "
                           f"n={args.n}, steps={args.steps}"}
    env = dict(os.environ) if args.omp_spin else {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    conditions["omp_wait_policy"] = env.get("OMP_WAIT_POLICY", "default (spinning)")
    every = {name: [] for name, _ in runs}
    with tempfile.TemporaryDirectory(prefix="ldseg_rt-ray-bench-") as tmp:
        study = Path(tmp) / "study"
        write_study(study, args.cases, args.size, args.depth)
        for r in range(args.rounds):
            for k, (name, extra) in enumerate(runs):
                every[name].append(run(name, study, Path(tmp) / f"out{r}-{k}", flags, extra, env))
                print(f"round {r + 1}, {name}: {every[name][-1]['wall_seconds']:.1f} s, load average {load_average()}",
                      file=sys.stderr, flush=True)
    conditions["load_average_after"] = load_average()
    reference = every[runs[0][0]][0]["outputs"]
    rows = []
    for name, _ in runs:
        row = sorted(every[name], key=lambda r: r["wall_seconds"])[len(every[name]) // 2]  # the median run
        row["wall_seconds_all"] = [r["wall_seconds"] for r in every[name]]
        row["identical_to_single_process"] = all(r["outputs"] == reference for r in every[name])
        row["output_files"] = len(row["outputs"])
        rows.append(row)
    for row in rows:
        row.pop("outputs")
        row["speedup"] = round(rows[0]["wall_seconds"] / row["wall_seconds"], 2)

    report = (f"{conditions['study']}; {conditions['cpu']}; torch {conditions['torch']} on "
              f"{conditions['torch_threads']} threads, OMP_WAIT_POLICY {conditions['omp_wait_policy']}; Ray "
              f"{conditions['ray']}; load average before {conditions['load_average_before']}, after "
              f"{conditions['load_average_after']}:\n\n{format_markdown_table(HEADER, [table_row(r) for r in rows])}")
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"conditions": conditions, "runs": rows}, indent=2) + "\n")
    publish(__file__, report, no_write=args.no_write)


if __name__ == "__main__":
    main()
