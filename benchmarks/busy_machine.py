"""sample() on a busy machine: the median time of a call with nothing else running, and with one
and two competing processes each keeping every usable core busy (the CPU-bound programs a
scanner-side workstation also runs), per backend. Each backend runs in a fresh process, so
settings read at start-up (OpenMP's wait policy) are what a user's process would get.

    .venv/bin/python benchmarks/busy_machine.py [--config builtin] [-n 16] [--repeats 5]
        [--backends torch,onnxruntime,openvino]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ldseg_rt.bench.busy import busy


def time_calls(engine: str, backend: str, n: int, repeats: int) -> dict:
    """Runs in a fresh interpreter: median and worst of `repeats` calls after a warm-up."""
    from ldseg_rt import Segmenter
    from ldseg_rt.data.phantoms import make_phantom
    seg = Segmenter(engine, backend=backend, device="cpu")
    image = make_phantom(seg.config.image_shape[-1], 3, seg.config.in_channels)[0]
    seg.sample(image, n=n, seed=0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        seg.sample(image, n=n, seed=i)
        times.append(time.perf_counter() - start)
    return {"median": float(np.median(times)), "worst": float(max(times))}


def measure(engine: str, backend: str, n: int, repeats: int, competitors: int) -> dict:
    """The calls' times, in a fresh interpreter, while `competitors` programs keep every usable core busy."""
    with busy(competitors):
        code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import busy_machine as b; "
                f"print(json.dumps(b.time_calls({engine!r}, {backend!r}, {n}, {repeats})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="builtin", help="'builtin' (the built-in model, exported) or a config name")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    args = parser.parse_args()
    import torch

    from ldseg_rt.bench.machine import describe_machine, machine_info
    from ldseg_rt.configs import get_config
    from ldseg_rt.export import export_bundle
    from ldseg_rt.models import build_model
    from ldseg_rt.models.checkpoint import load_model
    print(describe_machine(machine_info(torch.device("cpu"))))
    with tempfile.TemporaryDirectory() as work:
        model = load_model("builtin:phantom") if args.config == "builtin" else build_model(get_config(args.config))
        bundle = export_bundle(model, os.path.join(work, "model.ldseg"), check_batches=(1,), progress=False)
        print(f"{args.config}, n={args.n}, median (worst) of {args.repeats} calls after a warm-up")
        print("| backend | quiet | 1 busy process | 2 busy processes | ratio 1 / quiet | ratio 2 / quiet |")
        print("| --- | --- | --- | --- | --- | --- |")
        for backend in args.backends.split(","):
            runs = [measure(str(bundle.path), backend, args.n, args.repeats, k) for k in (0, 1, 2)]
            cells = [f"{r['median']:.3f} s ({r['worst']:.2f})" for r in runs]
            print(f"| {backend} | {' | '.join(cells)} | {runs[1]['median'] / runs[0]['median']:.2f} | "
                  f"{runs[2]['median'] / runs[0]['median']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
