"""The harness: a configuration's workload (model, test image, exported bundle), the
backend/precision/device combinations this machine can run, `Bench`, which measures one row
(latency, peak memory, FLOPs, matmul fraction, speedups over the eager baselines) and keeps
what rows share, and the command line (`add_arguments`, `run`, `main`) that runs the rows,
prints the table and writes results.json and its RESULTS.md section."""
from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..backends import BACKENDS, PRECISIONS, openvino_available, resolve_device, tensorrt_available
from ..backends.precision import check_precision, cpu_has_bf16
from ..configs import get_config
from ..diffusion.plan import sampling_plan
from ..errors import BackendError
from ..models import build_model
from ..pipeline.preprocess import native_size
from .baselines import eager_batched, eager_per_sample
from .busy import busy
from .flops import flops_per_call
from .machine import (MATMUL_SIZE, RSS_METHODS, PeakMemory, describe_machine, machine_info, matmul_gflops, rss_method,
                      timed)
from .report import format_text_table, markdown_section, table_rows, write_section
from .script import add_no_write

ROW_KEYS = ("config", "backend", "precision", "n", "steps", "latency_ms", "samples_per_s", "flops", "gflops_per_s",
            "fraction_of_matmul", "speedup_vs_eager_per_sample", "speedup_vs_eager_batched", "peak_rss_mb",
            "consensus_agreement", "agreement_reference", "busy_programs", "busy_latency_ms", "busy_ratio")
DEFAULT_CONFIGS = ("glas512", "small", "amb_small")
DEFAULT_N = (1, 16)
QUICK = {"configs": ("small", "amb_small"), "n": (1, 4), "warmup": 1, "repeats": 3}
SEED = 0  # the sampling seed of every timed call
_REPO_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DEFAULT_DIR = _REPO_BENCHMARKS if _REPO_BENCHMARKS.is_dir() else Path("benchmarks")
SECTION = "speed/end_to_end"  # its section of RESULTS.md, named after the script benchmarks/ runs it by


class Workload:
    """One configuration's model (random weights for a seed, or the one given), a test image
    at the model's input size, and, on first need, its bundle exported to a temporary folder."""

    def __init__(self, name: str, model=None, seed: int = 0):
        self.name = name
        self.model = build_model(get_config(name), seed) if model is None else model.eval()
        self.config = self.model.config
        rng = np.random.default_rng(seed)
        size, channels = native_size(self.config), self.config.in_channels
        self.image = rng.random(size if channels == 1 else (*size, channels), dtype=np.float32)
        self._folder, self._bundle, self._on = None, None, {}
        self.flops: dict[int, int] = {}

    def bundle(self):
        if self._bundle is None:
            from ..export import export_bundle
            self._folder = tempfile.TemporaryDirectory(prefix="ldseg_rt-bench-")
            self._bundle = export_bundle(self.model, Path(self._folder.name) / f"{self.name}.ldseg",
                                         source=f"bench workload {self.name}", check_batches=(1,), progress=False)
        return self._bundle

    def model_on(self, device: torch.device):
        """The fp32 model on `device` (the baselines' copy)."""
        if device.type == "cpu":
            return self.model
        if device not in self._on:
            self._on[device] = copy.deepcopy(self.model).to(device).eval()
        return self._on[device]

    def close(self) -> None:
        self._bundle, self._on = None, {}
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def plan_backends(device: torch.device, backends=None) -> tuple[list[tuple[str, str, torch.device]], list[str]]:
    """(backend, precision, device) combinations this machine can run, and why the rest are skipped."""
    runnable, skipped = [], []
    for backend in BACKENDS:
        if backends and backend not in backends:
            continue
        for precision in PRECISIONS[backend]:
            what = f"{backend} {precision}"
            if backend == "torch":
                try:
                    check_precision(precision, device)
                    runnable.append((backend, precision, device))
                except BackendError as e:
                    skipped.append(f"{what}: {e}")
            elif backend == "onnxruntime":
                import onnxruntime
                on_gpu = device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
                runnable.append((backend, precision, device if on_gpu else torch.device("cpu")))
            elif backend == "openvino":
                if not openvino_available():
                    skipped.append(f"{what}: the openvino package is not installed (pip install 'ldseg_rt[openvino]')")
                elif precision == "bf16" and not cpu_has_bf16():
                    skipped.append(f"{what}: this CPU has neither AVX-512 bf16 nor AMX")
                else:
                    runnable.append((backend, precision, torch.device("cpu")))
            elif device.type != "cuda":
                skipped.append(f"{what}: needs an NVIDIA GPU")
            elif not tensorrt_available():
                skipped.append(f"{what}: the tensorrt package is not installed (pip install tensorrt)")
            else:
                runnable.append((backend, precision, device))
    return runnable, skipped


class Bench:
    """Measures rows; keeps what rows share (the matmul rate, workloads, segmenters, the
    baselines' latencies per config, n and device)."""

    def __init__(self, warmup: int = 1, repeats: int = 5, device="auto", models: dict | None = None,
                 matmul_size: int = MATMUL_SIZE, matmul_repeats: int = 5, seed: int = 0, busy: int = 0):
        """busy: also time every row while that many competing programs keep every core busy."""
        self.warmup, self.repeats, self.seed, self.busy = int(warmup), int(repeats), seed, int(busy)
        self.device = resolve_device(device)
        self.models = dict(models or {})
        self.matmul_size, self.matmul_repeats = matmul_size, matmul_repeats
        self.rss_method = rss_method()
        self.workloads: dict[str, Workload] = {}
        self.segmenters: dict = {}
        self.baselines: dict = {}  # (config, n, device) -> {"eager_per_sample": s, "eager_batched": s}
        self.extras: dict = {}  # (config, backend, precision, n) -> device, peak GPU memory
        self.references: dict = {}  # (config, n) -> (consensus, row name) of the first fp32 row
        self._matmul: dict = {}

    def matmul_gflops(self, device: torch.device | None = None) -> float:
        device = device or self.device
        if device not in self._matmul:
            self._matmul[device] = matmul_gflops(device, self.matmul_size, self.matmul_repeats)
        return self._matmul[device]

    def workload(self, name: str) -> Workload:
        if name not in self.workloads:
            self.workloads[name] = Workload(name, self.models.get(name), self.seed)
        return self.workloads[name]

    def segmenter(self, name: str, backend: str, precision: str, device: torch.device):
        from ..segmenter import Segmenter
        key = (name, backend, precision, device)
        if key not in self.segmenters:
            w = self.workload(name)
            engine = w.model if backend == "torch" else w.bundle().path
            self.segmenters[key] = Segmenter(engine, backend=backend, device=str(device), precision=precision)
        return self.segmenters[key]

    def flops(self, name: str, n: int) -> int:
        w = self.workload(name)
        if n not in w.flops:
            w.flops[n] = flops_per_call(w.model, n, w.config.steps)
        return w.flops[n]

    def baseline(self, name: str, n: int, device: torch.device) -> dict:
        """Latencies (s) of the two plain PyTorch pipelines for this config, n and device."""
        key = (name, n, device)
        if key not in self.baselines:
            w = self.workload(name)
            model, plan = w.model_on(device), sampling_plan(w.config, w.config.steps, float(w.config.eta))
            self.baselines[key] = {
                run.__name__: timed(lambda: run(model, w.image, n, SEED, plan, device), self.warmup, self.repeats,
                                    device)
                for run in (eager_per_sample, eager_batched)}
        return self.baselines[key]

    def row(self, name: str, backend: str, precision: str, n: int, device: torch.device | None = None) -> dict:
        """One row: sample() of one image with n samples on this backend and precision."""
        device = self.device if device is None else torch.device(device)
        seg = self.segmenter(name, backend, precision, device)
        w = self.workload(name)
        memory = PeakMemory(self.rss_method, device)
        latency = timed(lambda: seg.sample(w.image, n=n, seed=SEED), self.warmup, self.repeats, device, memory)
        agreement, reference = self._agreement(name, backend, precision, n, seg.sample(w.image, n=n, seed=SEED).mask)
        busy_latency = None
        if self.busy:
            with busy(self.busy):
                busy_latency = timed(lambda: seg.sample(w.image, n=n, seed=SEED), self.warmup, self.repeats, device)
        flops = self.flops(name, n)
        base = self.baseline(name, n, device)
        achieved = flops / latency / 1e9
        record = {"config": name, "backend": backend, "precision": precision, "n": n, "steps": w.config.steps,
                  "latency_ms": latency * 1e3, "samples_per_s": n / latency, "flops": flops,
                  "gflops_per_s": achieved, "fraction_of_matmul": achieved / self.matmul_gflops(device),
                  "speedup_vs_eager_per_sample": base["eager_per_sample"] / latency,
                  "speedup_vs_eager_batched": base["eager_batched"] / latency, "peak_rss_mb": memory.rss_mb,
                  "consensus_agreement": agreement, "agreement_reference": reference, "busy_programs": self.busy,
                  "busy_latency_ms": None if busy_latency is None else busy_latency * 1e3,
                  "busy_ratio": None if busy_latency is None else busy_latency / latency}
        self.extras[(name, backend, precision, n)] = {"device": str(device), "peak_gpu_mb": memory.gpu_mb}
        return record

    def _agreement(self, name: str, backend: str, precision: str, n: int, mask) -> tuple[float | None, str | None]:
        """The fraction of pixels whose consensus matches the first fp32 row's of this config and n
        (that row is the reference: 1.0 itself); None before any fp32 row."""
        if precision == "fp32":
            self.references.setdefault((name, n), (mask, f"{backend} fp32"))
        if (name, n) not in self.references:
            return None, None
        want, reference = self.references[(name, n)]
        return float((np.asarray(mask) == np.asarray(want)).mean()), reference

    def release(self, name: str) -> None:
        """Drop a configuration's segmenters, bundle and model copies."""
        for key in [k for k in self.segmenters if k[0] == name]:
            del self.segmenters[key]
        for key in [k for k in self.references if k[0] == name]:
            del self.references[key]
        if name in self.workloads:
            self.workloads.pop(name).close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _configs(values) -> list[str]:
    names = [c for v in values for c in str(v).split(",") if c]
    for name in names:
        get_config(name)  # a clear error for an unknown name
    return names


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--configs", nargs="+", default=None,
                        help=f"configurations (default {' '.join(DEFAULT_CONFIGS)}; --quick: "
                             f"{' '.join(QUICK['configs'])})")
    parser.add_argument("--n", nargs="+", type=int, default=None,
                        help=f"samples per call (default {' '.join(map(str, DEFAULT_N))}; --quick: "
                             f"{' '.join(map(str, QUICK['n']))})")
    parser.add_argument("--repeats", type=int, default=None, help="measured calls per row (default 5; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured calls first (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="small and amb_small, n 1 and 4, 1 warm-up, 3 repeats (baselines included)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (ONNX Runtime takes torch's count); default: torch's")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="only these backends (default: every one available here)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--busy", type=int, default=0, metavar="K",
                        help="also time each row while K competing programs keep every core busy (one process "
                             "per core each); the table shows the ratio to the quiet time")
    parser.add_argument("--out-json", default=str(DEFAULT_DIR / "results.json"))
    parser.add_argument("--results-md", default=str(DEFAULT_DIR / "RESULTS.md"),
                        help=f"markdown file whose section '{SECTION}' is rewritten ('' to skip)")
    add_no_write(parser, "--out-json or --results-md")
    parser.set_defaults(command_name=parser.prog)
    return parser


def run(args) -> list[dict]:
    from tqdm import tqdm

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("error: --threads must be >= 1")
        torch.set_num_threads(args.threads)
    quick = args.quick
    configs = _configs(args.configs) if args.configs else list(QUICK["configs"] if quick else DEFAULT_CONFIGS)
    ns = list(args.n) if args.n else list(QUICK["n"] if quick else DEFAULT_N)
    if any(n < 1 for n in ns):
        raise SystemExit("error: every --n must be >= 1")
    warmup = args.warmup if args.warmup is not None else QUICK["warmup"] if quick else 1
    repeats = args.repeats if args.repeats is not None else QUICK["repeats"] if quick else 5
    if warmup < 0 or repeats < 1 or args.busy < 0:
        raise SystemExit("error: --warmup and --busy must be >= 0 and --repeats >= 1")

    bench = Bench(warmup=warmup, repeats=repeats, device=args.device, matmul_repeats=3 if quick else 5,
                  busy=args.busy)
    combos, skipped = plan_backends(bench.device, args.backends)
    info = machine_info(bench.device)
    print(f"machine: {describe_machine(info)}")
    for reason in skipped:
        print(f"skipped {reason}")
    matmul = {str(d): bench.matmul_gflops(d) for d in dict.fromkeys(d for _, _, d in combos)}
    print("fp32 matmul rate: " + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in matmul.items()))
    print(f"peak RSS: {RSS_METHODS[bench.rss_method]}")

    records = []
    bar = tqdm(total=len(configs) * len(combos) * len(ns), desc="bench", unit="row")
    for name in configs:
        for backend, precision, device in combos:
            for n in ns:
                bar.set_postfix_str(f"{name} {backend} {precision} n={n}")
                try:
                    records.append(bench.row(name, backend, precision, n, device))
                except Exception as e:  # noqa: BLE001 - a combination that cannot run here is skipped
                    reason = f"{name} {backend} {precision} n={n}: {type(e).__name__}: {e}"
                    skipped.append(reason)
                    tqdm.write(f"skipped {reason}")
                bar.update()
        bench.release(name)
    bar.close()

    header, rows = table_rows(records, bench.extras)
    print(format_text_table(header, rows))
    if args.out_json and not args.no_write:
        out = Path(args.out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([{k: r[k] for k in ROW_KEYS} for r in records], indent=1) + "\n")
        print(f"wrote {out}")
    if args.results_md and not args.no_write:
        section = markdown_section(records, bench.extras, info, matmul, bench.baselines, skipped,
                                   _command_line(args), bench.rss_method)
        write_section(Path(args.results_md), SECTION, section)
        print(f"rewrote section {SECTION} of {args.results_md}")
    return records


def _command_line(args) -> str:
    """The options that shaped the run, as a command line."""
    parts = [args.command_name]
    if args.quick:
        parts.append("--quick")
    for flag, value in (("--configs", args.configs), ("--n", args.n), ("--repeats", args.repeats),
                        ("--warmup", args.warmup), ("--threads", args.threads), ("--backends", args.backends),
                        ("--busy", args.busy or None)):
        if value is not None:
            parts.append(f"{flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value)))
    if args.device != "auto":
        parts.append(f"--device {args.device}")
    return " ".join(parts)


def main(argv=None, prog: str = "python -m ldseg_rt bench") -> list[dict]:
    """prog: the command as its user types it, named in the help and in the RESULTS.md section."""
    from . import __doc__ as overview  # the package's docstring, as before the split
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=overview.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))

