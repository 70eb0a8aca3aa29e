"""The GPU path checked and timed in one run, for a machine with a CUDA GPU and the project
installed editable (`pip install -e .`):

    python benchmarks/gpu_check.py --out gpu_check/          # ~9 minutes at most on one H100/H200
    python benchmarks/gpu_check.py --cpu --out /tmp/check/   # the script itself, small, on the CPU

Stages, each with a time budget, each failing soft (its error recorded, the next one run):
  tests      pytest on tests/kernels, tests/backends/test_torch_gpu_path.py and test_tensorrt.py
             (not under TRITON_INTERPRET; --cpu only collects them); the log goes to pytest.log.
  kernels    each Triton kernel against its torch counterpart (triton.testing.do_bench, median)
             at the shapes the configuration's networks call it with, per precision; then every
             compiled kernel's registers and spills as the driver loaded it.
  segmenter  Segmenter.sample at n=16 on CUDA, random weights: fp32/fp16/bf16 with and without
             CUDA graphs, and eager PyTorch (fp32, kernels and graphs off); per call the median
             after warm-up, the first call, whether a second call with the same seed is
             bit-identical, agreement of the consensus and the latents with the CPU fp32 run,
             peak GPU memory and the speedup over eager.
  tensorrt   the TensorRT backend against torch, where tensorrt imports.
gpu_check.json and gpu_check.md in --out are rewritten after every measurement, so a run
killed midway still leaves what it measured.
"""
from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOTAL_S = 530  # under the 9 minutes a run may take, with room to start and write
BUDGET_S = {"tests": 200, "kernels": 60, "segmenter": 210, "tensorrt": 60}
TEST_FILES = ["tests/kernels", "tests/backends/test_torch_gpu_path.py", "tests/backends/test_tensorrt.py"]
SEED = 0


class Report:
    """The results so far, written to JSON and markdown after every change."""

    def __init__(self, out: Path, settings: dict):
        self.out = out
        self.start = time.monotonic()
        self.data = {"settings": settings, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)

    def remaining(self) -> float:
        return TOTAL_S - (time.monotonic() - self.start)

    def write(self) -> None:
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu_check.md", self.markdown())):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def markdown(self) -> str:
        lines = ["# GPU check", "", "```", json.dumps(self.data["settings"], default=str), "```"]
        for name, stage in self.data["stages"].items():
            lines += ["", f"## {name}: {stage['status']} ({stage.get('seconds', 0):.0f} s of {stage['budget_s']} s)"]
            if "error" in stage:
                lines += ["", "```", stage["error"].strip(), "```"]
            for key, value in stage.items():
                if key not in ("status", "seconds", "budget_s", "error", "items"):
                    lines += ["", f"{key}: {value}"]
            items = stage.get("items", [])
            columns = list(dict.fromkeys(k for item in items for k, v in item.items()
                                         if k != "status" and not isinstance(v, (list, dict)))) + ["status"]
            if items:
                lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
                lines += ["| " + " | ".join(_cell(item.get(c, "")) for c in columns) + " |" for item in items]
        return "\n".join(lines) + "\n"

    def stage(self, name: str, run) -> None:
        """Run one stage within its budget (and what is left of the total); record how it went."""
        budget = min(BUDGET_S[name], self.remaining())
        entry = self.data["stages"][name] = {"status": "running", "budget_s": round(budget), "items": []}
        self.write()
        start = time.monotonic()
        stage = Stage(self, entry, start + budget)
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        try:
            if budget <= 0:
                raise TimeoutError("no time left")
            run(stage)
            entry["status"] = "partial (time budget)" if stage.cut else "ok"
        except Exception:
            entry["status"] = "error"
            entry["error"] = traceback.format_exc(limit=8)
            print(entry["error"], flush=True)
        entry["seconds"] = round(time.monotonic() - start, 1)
        self.write()


class Stage:
    def __init__(self, report: Report, entry: dict, deadline: float):
        self.report, self.entry, self.deadline, self.cut = report, entry, deadline, False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def item(self, name: str, measure, **fields) -> dict | None:
        """One measurement: its result recorded under `name`, or its error, or skipped when the
        stage's time is up. Returns the result (None when skipped or failed)."""
        row = {"item": name, **fields}
        self.entry["items"].append(row)
        if self.left() <= 0:
            row["status"], self.cut = "skipped (time budget)", True
        else:
            try:
                row.update(measure())
                row.setdefault("status", "ok")
            except Exception as e:
                row["status"] = f"error: {type(e).__name__}: {e}"[:300]
        print("  " + ", ".join(f"{k}={_cell(v)}" for k, v in row.items()), flush=True)
        self.report.write()
        return row if row["status"] == "ok" else None


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


def stage_tests(stage: Stage, args) -> None:
    """pytest in a subprocess, its log streamed to a file (kept when the run is killed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" or args.cpu}
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "--durations=10",
               *TEST_FILES, *(["--collect-only"] if args.cpu else [])]
    stage.entry["command"] = " ".join(command[1:])
    log = args.out / "pytest.log"

    def run():
        with open(log, "w") as out:
            try:
                code = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=max(1.0, stage.left())).returncode
            except subprocess.TimeoutExpired:
                code = "timed out"
        text = log.read_text()
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|errors?|tests? collected)", line)]
        failed = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return {"returncode": code, "summary": summary[-1] if summary else text[-300:], "failed": failed[:30],
                "status": "ok" if code == 0 else f"pytest exit {code}"}

    stage.item("pytest", run)


def _timer(device):
    """Median milliseconds of a callable: triton's do_bench on CUDA, a few wall-clock runs elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median")

    def wall(fn):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    return wall


def _kernel_shapes(model, device, n: int):
    """(attention q/k shapes, GroupNorm (x shape, groups, silu)) the networks call the kernels with."""
    import torch

    from ldseg_rt.backends.gpu_model import TritonGroupNorm, gpu_model
    from ldseg_rt.backends.precision import run_context
    swapped = gpu_model(model, device, "fp32", kernels=True)
    attention, norms = {}, {}
    for module in swapped.modules():
        if hasattr(module, "attend"):
            def record(q, k, v, scale=None, attend=module.attend):
                attention[(tuple(q.shape), tuple(k.shape))] = None
                return attend(q, k, v, scale=scale)
            module.attend = record
        if isinstance(module, TritonGroupNorm):
            module.register_forward_pre_hook(
                lambda m, inputs: norms.__setitem__((tuple(inputs[0].shape), m.groups, m.silu), None))
    cfg = model.config
    image = torch.rand(1, cfg.in_channels, *cfg.image_shape, device=device)
    z = torch.randn(n, *cfg.latent_shape, device=device)
    with torch.inference_mode(), run_context(device, "fp32"):
        z_i = swapped.image_encoder(image)
        swapped.denoiser(z, z_i.expand(n, *z_i.shape[1:]), torch.full((n,), 10.0, device=device))
        swapped.decoder(z)
    return list(attention), list(norms)


def _largest(shapes, count: int, size):
    return sorted(shapes, key=size, reverse=True)[:count]


def stage_kernels(stage: Stage, args, device, workload) -> None:
    import torch
    import torch.nn.functional as F

    from ldseg_rt.backends.precision import DTYPES
    from ldseg_rt.diffusion.plan import sampling_plan
    from ldseg_rt.kernels.aggregate import aggregate, aggregate_reference
    from ldseg_rt.kernels.attention import attention
    from ldseg_rt.kernels.diffusion_step import diffusion_step, diffusion_step_reference
    from ldseg_rt.kernels.groupnorm import group_norm
    bench = _timer(device)
    attention_shapes, norm_shapes = _kernel_shapes(workload.model, device, args.n)
    stage.entry["shapes"] = f"{len(attention_shapes)} attention, {len(norm_shapes)} GroupNorm (largest timed)"
    count = 2 if args.cpu else 6

    def pair(triton_fn, torch_fn):
        ms, torch_ms = bench(triton_fn), bench(torch_fn)
        return {"triton_ms": ms, "torch_ms": torch_ms, "speedup": torch_ms / ms}

    for precision in args.precisions:
        dtype = DTYPES[precision]
        for q_shape, k_shape in _largest(attention_shapes, count, lambda s: s[0][2] * s[1][2] * s[0][0] * s[0][1]):
            q = torch.randn(q_shape, device=device, dtype=dtype)
            k, v = (torch.randn(k_shape, device=device, dtype=dtype) for _ in range(2))
            stage.item("attention", lambda: pair(lambda: attention(q, k, v), lambda: F.scaled_dot_product_attention(q, k, v)),
                       precision=precision, shape=f"q{list(q_shape)} k{list(k_shape)}")
        for shape, groups, silu in _largest(norm_shapes, count, lambda s: s[0][0] * s[0][1] * s[0][2] * s[0][3]):
            x = torch.randn(shape, device=device, dtype=dtype)
            w, b = torch.randn(shape[1], device=device), torch.randn(shape[1], device=device)

            def torch_norm():  # as autocast runs it: in fp32, whatever x's dtype
                y = F.group_norm(x.float(), groups, w, b, 1e-3)
                return F.silu(y) if silu else y
            stage.item("group_norm", lambda: pair(lambda: group_norm(x, groups, w, b, 1e-3, silu), torch_norm),
                       precision=precision, shape=f"{list(shape)} G{groups}{' silu' if silu else ''}")
    cfg = workload.config
    plan = sampling_plan(cfg, cfg.steps, 1.0)
    z = torch.randn(args.n, *cfg.latent_shape, device=device)
    seeds, samples = torch.arange(args.n, device=device), torch.arange(args.n, device=device)
    row = tuple(plan.table[1])
    stage.item("diffusion_step", lambda: pair(lambda: diffusion_step(z, z, seeds, samples, 1, row),
                                              lambda: diffusion_step_reference(z, z, seeds, samples, 1, row)),
               precision="fp32", shape=f"{[args.n, *cfg.latent_shape]} (torch: float64 reference)")
    probs = torch.softmax(torch.randn(args.n, cfg.num_classes, *cfg.image_shape, device=device), dim=1)
    stage.item("aggregate", lambda: pair(lambda: aggregate(probs), lambda: aggregate_reference(probs)),
               precision="fp32", shape=str(list(probs.shape)))
    if device.type == "cuda":
        stage.item("compiled kernels", _compiled_kernels)


def _compiled_kernels() -> dict:
    """Registers and spills of every Triton kernel this process compiled, as the driver loaded them."""
    from ldseg_rt.kernels import aggregate, attention, diffusion_step, groupnorm
    found = []
    for module in (attention, groupnorm, diffusion_step, aggregate):
        for name in dir(module):
            fn = getattr(module, name)
            for cache in getattr(fn, "device_caches", {}).values():
                for kernel in cache[0].values():
                    found.append({"kernel": name, "warps": kernel.metadata.num_warps, "regs": kernel.n_regs,
                                  "spills": kernel.n_spills, "shared": kernel.metadata.shared})
    spilling = [k for k in found if k["spills"]]
    return {"compiled": len(found), "spilling": len(spilling), "kernels": found,
            "status": "ok" if not spilling else f"{len(spilling)} spill: {spilling}"}


def _time_calls(seg, image, args, repeats: int) -> dict:
    import numpy as np
    import torch
    if seg.backend.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first = seg.sample(image, n=args.n, steps=args.steps, seed=SEED)
    first_ms = (time.perf_counter() - start) * 1e3
    again = seg.sample(image, n=args.n, steps=args.steps, seed=SEED)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seg.sample(image, n=args.n, steps=args.steps, seed=SEED)
        times.append((time.perf_counter() - start) * 1e3)
    row = {"median_ms": statistics.median(times), "first_call_ms": first_ms,
           "repeat_bit_identical": bool(np.array_equal(first.latents, again.latents)
                                        and np.array_equal(first.mask, again.mask)),
           "result": first}
    if seg.backend.device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return row


def stage_segmenter(stage: Stage, args, device, workload, shared: dict) -> None:
    import numpy as np
    import torch

    from ldseg_rt import Segmenter
    repeats = 1 if args.cpu else 5

    def compare(row, reference, prefix):
        got = row["result"]
        row[f"{prefix}_consensus_agreement"] = float((got.mask == reference.mask).mean())
        row[f"{prefix}_latent_max_diff"] = float(np.abs(got.latents - reference.latents).max())

    def cpu_reference():
        start = time.perf_counter()
        shared["cpu"] = Segmenter(workload.model, backend="torch", device="cpu").sample(
            workload.image, n=args.n, steps=args.steps, seed=SEED)
        return {"ms": (time.perf_counter() - start) * 1e3}

    stage.item("cpu fp32 reference", cpu_reference)
    runs = [("eager", "fp32", False, False)] + [
        ("kernels", p, True, graphs) for p in args.precisions for graphs in ((True, False) if device.type == "cuda" else (False,))]
    for label, precision, kernels, graphs in runs:
        def measure():
            seg = Segmenter(workload.model, backend="torch", device=device, precision=precision, kernels=kernels,
                            cuda_graphs=graphs)
            try:
                row = _time_calls(seg, workload.image, args, repeats)
            finally:
                del seg
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if "cpu" in shared:
                compare(row, shared["cpu"], "cpu")
            shared[(precision, graphs) if kernels else "eager"] = row.pop("result")
            if label != "eager" and "eager_ms" in shared:
                row["speedup_vs_eager"] = shared["eager_ms"] / row["median_ms"]
            if label == "eager":
                shared["eager_ms"] = row["median_ms"]
            return row
        stage.item(f"{label} {precision}", measure, precision=precision, kernels=kernels, cuda_graphs=graphs)
    for precision in args.precisions:  # graph replay against the same loop run op by op
        if (precision, True) in shared and (precision, False) in shared:
            a, b = shared[(precision, True)], shared[(precision, False)]
            stage.item(f"graphs vs none {precision}", lambda: {
                "latents_bit_identical": bool(np.array_equal(a.latents, b.latents)),
                "latent_max_diff": float(np.abs(a.latents - b.latents).max())})


def stage_tensorrt(stage: Stage, args, workload, shared: dict) -> None:
    import numpy as np

    from ldseg_rt import Segmenter
    if importlib.util.find_spec("tensorrt") is None:
        stage.entry["note"] = "tensorrt is not importable here: nothing to compare"
        return
    reference = shared.get(("fp32", True)) or shared.get(("fp32", False))
    for precision in ("fp32", "fp16"):
        def measure():
            seg = Segmenter.from_config(workload.name, seed=SEED, backend="tensorrt", device="cuda", precision=precision)
            row = _time_calls(seg, workload.image, args, 5)
            got = row.pop("result")
            if reference is not None:
                row["torch_consensus_agreement"] = float((got.mask == reference.mask).mean())
                row["torch_latent_max_diff"] = float(np.abs(got.latents - reference.latents).max())
            return row
        stage.item(f"tensorrt {precision}", measure, precision=precision)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, pytest.log")
    parser.add_argument("--cpu", "--dry-run", action="store_true",
                        help="check the script on the CPU: config 'small', n=2, 3 steps, kernels under TRITON_INTERPRET=1")
    parser.add_argument("--stages", default=",".join(BUDGET_S), help=f"comma-separated subset of {','.join(BUDGET_S)}")
    parser.add_argument("--config", help="configuration (default glas512; --cpu: small)")
    parser.add_argument("--n", type=int, help="samples per call (default 16; --cpu: 2)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the configuration's; --cpu: 3)")
    args = parser.parse_args(argv)
    args.config = args.config or ("small" if args.cpu else "glas512")
    args.n = args.n or (2 if args.cpu else 16)
    args.steps = args.steps or (3 if args.cpu else None)
    # fp16 on the CPU is refused by the backend: --cpu keeps it to see a stage fail soft.
    args.precisions = ("fp32", "fp16") if args.cpu else ("fp32", "fp16", "bf16")
    # triton reads TRITON_INTERPRET when a kernel is defined: before ldseg_rt.kernels is imported.
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    import torch
    import triton

    from ldseg_rt.bench.harness import Workload
    device = torch.device("cpu" if args.cpu else "cuda")
    settings = {"config": args.config, "n": args.n, "steps": args.steps, "device": str(device),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = Report(args.out, settings)
    if device.type == "cuda" and not torch.cuda.is_available():
        settings["error"] = "no CUDA GPU: run with --cpu to check the script on the CPU"
        report.write()
        print(settings["error"])
        return 2
    wanted = args.stages.split(",")
    workload, shared = functools.cache(lambda: Workload(args.config, seed=SEED)), {}  # built by the first stage needing it
    stages = {"tests": lambda s: stage_tests(s, args),
              "kernels": lambda s: stage_kernels(s, args, device, workload()),
              "segmenter": lambda s: stage_segmenter(s, args, device, workload(), shared),
              "tensorrt": lambda s: stage_tensorrt(s, args, workload(), shared)}
    for name, run in stages.items():
        if name in wanted:
            report.stage(name, run)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} "
          f"({time.monotonic() - report.start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
