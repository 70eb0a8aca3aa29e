"""sample() end to end per configuration, n, backend and precision, against eager PyTorch:
latency, throughput, peak memory, FLOPs and the fraction of the matmul rate they reach. The
harness is ldseg_rt.bench (users run it as `python -m ldseg_rt bench`); this is how benchmarks/
runs it. It writes its section of benchmarks/RESULTS.md and benchmarks/results.json unless
--no-write. Options: --help.

    python benchmarks/speed/end_to_end.py --quick
    python benchmarks/speed/end_to_end.py --configs glas512 amb128 --n 16 --repeats 3 --busy 1
"""
from ldseg_rt.bench import main
from ldseg_rt.bench.script import command_of

if __name__ == "__main__":
    main(prog=command_of(__file__))
