"""The denoiser's time per sample at each batch size, per CPU backend: is one call on all n samples
(what the sampler makes) the fastest way through the network, or would smaller batches be faster?
Random weights, one call per timing, median of --repeats after a warm-up at each batch. Writes its
section of benchmarks/RESULTS.md unless --no-write.

    python benchmarks/speed/denoiser_batch.py [--config amb128] [--batches 1 4 8 16]
        [--backends torch onnxruntime openvino]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ldseg_rt.bench.report import format_markdown_table, markdown_row
from ldseg_rt.bench.script import parse_args, publish


def ms_per_sample(backend, config, batch: int, repeats: int) -> float:
    """The median of `repeats` denoiser calls at `batch`, after a warm-up call, per sample."""
    from ldseg_rt.bench import network_inputs
    inputs = [t.numpy() for t in network_inputs(config, batch)["denoiser"]]
    backend.run("denoiser", *inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.run("denoiser", *inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="amb128")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser)
    from ldseg_rt.backends import create_backend
    from ldseg_rt.configs import get_config
    from ldseg_rt.export import export_bundle
    from ldseg_rt.models import build_model

    model = build_model(get_config(args.config), seed=0)
    header = ["config", "backend", *(f"batch {b}" for b in args.batches)]
    title = f"{args.config} denoiser, ms per sample (median of {args.repeats} calls)"
    print(title, format_markdown_table(header, []), sep="\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        bundle = export_bundle(model, Path(folder) / "m.ldseg", check_batches=(1,), progress=False)
        for name in args.backends:
            backend = create_backend(name, model if name == "torch" else bundle, "cpu", "fp32")
            rows.append([args.config, name, *(f"{ms_per_sample(backend, model.config, b, args.repeats):.1f}"
                                              for b in args.batches)])
            print(markdown_row(rows[-1]), flush=True)
    publish(__file__, f"{title}:\n\n{format_markdown_table(header, rows)}", no_write=args.no_write)


if __name__ == "__main__":
    main()
