"""The denoiser's time per sample at each batch size, per CPU backend: is one call on all n samples
(what the sampler makes) the fastest way through the network, or would smaller batches be faster?
Random weights, one call per timing, median of --repeats after a warm-up at each batch.

    .venv/bin/python benchmarks/denoiser_batch.py [--config amb128] [--batches 1 4 8 16]
        [--backends torch onnxruntime openvino]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="amb128")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    from ldseg_rt.backends import create_backend
    from ldseg_rt.bench import network_inputs
    from ldseg_rt.bench.machine import describe_machine, machine_info
    from ldseg_rt.configs import get_config
    from ldseg_rt.export import export_bundle
    from ldseg_rt.models import build_model

    print(describe_machine(machine_info(torch.device("cpu"))))
    model = build_model(get_config(args.config), seed=0)
    with tempfile.TemporaryDirectory() as folder:
        bundle = export_bundle(model, Path(folder) / "m.ldseg", check_batches=(1,), progress=False)
        print(f"{args.config} denoiser, ms per sample (median of {args.repeats} calls)")
        print("| backend | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
        print("| --- |" + " --- |" * len(args.batches))
        for name in args.backends:
            backend = create_backend(name, model if name == "torch" else bundle, "cpu", "fp32")
            cells = []
            for batch in args.batches:
                inputs = [t.numpy() for t in network_inputs(model.config, batch)["denoiser"]]
                backend.run("denoiser", *inputs)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    backend.run("denoiser", *inputs)
                    times.append(time.perf_counter() - start)
                cells.append(f"{statistics.median(times) / batch * 1e3:.1f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
