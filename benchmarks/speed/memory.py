"""Peak memory of sample() against what its math needs, each case in a fresh process (so
nothing another case left behind counts): RSS once the Segmenter is loaded and has sampled
once at n=1 (libraries, weights, sessions, lazily built caches), the peak RSS over two calls
at n, their difference (the working memory of sample() at n), and the largest activation set
(ldseg_rt.bench.activations). Linux only (reads /proc/self/status). Writes its section of
benchmarks/RESULTS.md unless --no-write.

    python benchmarks/speed/memory.py [--configs glas512 small] [--backends onnxruntime torch] [-n 16]
"""
import argparse
import json
import subprocess
import sys

from ldseg_rt.bench.report import format_markdown_table, markdown_row
from ldseg_rt.bench.script import parse_args, publish

HEADER = ["config", "backend", "n", "RSS loaded MB", "peak RSS MB", "working MB", "largest activation set MB",
          "working / largest"]

CASE = r"""
import json, sys
import numpy as np
from ldseg_rt import Segmenter
from ldseg_rt.bench.activations import largest_activation_bytes

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

name, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg = Segmenter.from_config(name, backend=backend, device="cpu")
cfg = seg.config
image = np.random.default_rng(0).random((cfg.image_size, cfg.image_size) + ((cfg.in_channels,) if cfg.in_channels > 1 else ()),
                                        dtype=np.float32)
seg.sample(image, n=1, seed=0)
loaded = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # peak from here
for seed in range(2):
    seg.sample(image, n=n, seed=seed)
peak = status("VmHWM:")
model = Segmenter.from_config(name, backend="torch").backend.model
activation, where = largest_activation_bytes(model, n, seg.backend.decode_batch)
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "activation_mb": activation / 2 ** 20, "where": where}))
"""


def case_row(name: str, backend: str, n: int) -> list[str]:
    """One case, measured in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CASE, name, backend, str(n)], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    working = r["peak_mb"] - r["loaded_mb"]
    return [name, backend, str(n), f"{r['loaded_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{working:.0f}",
            f"{r['activation_mb']:.0f} ({r['where']})", f"{working / r['activation_mb']:.2f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["glas512", "small"])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("-n", type=int, default=16)
    args = parse_args(parser)
    print(format_markdown_table(HEADER, []))
    rows = []
    for name in args.configs:
        for backend in args.backends:
            rows.append(case_row(name, backend, args.n))
            print(markdown_row(rows[-1]), flush=True)
    publish(__file__, format_markdown_table(HEADER, rows), no_write=args.no_write)


if __name__ == "__main__":
    main()
