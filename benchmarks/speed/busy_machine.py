"""sample() on a busy machine: the median (and worst) time of a call with nothing else running, and
with one and two competing programs each keeping every usable core busy (the CPU-bound programs a
scanner-side workstation also runs), per backend. Each backend is timed in a fresh process (this
script run with --child), so settings read at start-up (OpenMP's wait policy) are what a user's
process would get. Writes its section of benchmarks/RESULTS.md unless --no-write.

    python benchmarks/speed/busy_machine.py [--config builtin] [-n 16] [--repeats 5]
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
from ldseg_rt.bench.report import format_markdown_table, markdown_row
from ldseg_rt.bench.script import parse_args, publish

COMPETITORS = (0, 1, 2)
HEADER = ["backend", "quiet", "1 busy program", "2 busy programs", "1 busy / quiet", "2 busy / quiet"]


def time_calls(engine: str, backend: str, n: int, repeats: int) -> dict:
    """Median and worst of `repeats` calls after a warm-up (what the --child process runs)."""
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
    """The calls' times, in a fresh process, while `competitors` programs keep every usable core busy."""
    with busy(competitors):
        out = subprocess.run([sys.executable, __file__, "--child", engine, backend, str(n), str(repeats)],
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def backend_row(bundle: str, backend: str, args) -> list[str]:
    runs = [measure(bundle, backend, args.n, args.repeats, k) for k in COMPETITORS]
    return [backend, *(f"{r['median']:.3f} s ({r['worst']:.2f})" for r in runs),
            *(f"{r['median'] / runs[0]['median']:.2f}" for r in runs[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="builtin", help="'builtin' (the built-in model, exported) or a config name")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "BACKEND", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.child:
        engine, backend, n, repeats = args.child
        print(json.dumps(time_calls(engine, backend, int(n), int(repeats))))
        return
    from ldseg_rt.configs import get_config
    from ldseg_rt.export import export_bundle
    from ldseg_rt.models import build_model
    from ldseg_rt.models.checkpoint import load_model
    with tempfile.TemporaryDirectory() as work:
        model = load_model("builtin:phantom") if args.config == "builtin" else build_model(get_config(args.config))
        bundle = export_bundle(model, os.path.join(work, "model.ldseg"), check_batches=(1,), progress=False)
        title = f"{args.config}, n={args.n}, median (worst) of {args.repeats} calls after a warm-up"
        print(title, format_markdown_table(HEADER, []), sep="\n")
        rows = []
        for backend in args.backends.split(","):
            rows.append(backend_row(str(bundle.path), backend, args))
            print(markdown_row(rows[-1]), flush=True)
    publish(__file__, f"{title}:\n\n{format_markdown_table(HEADER, rows)}", no_write=args.no_write)


if __name__ == "__main__":
    main()
