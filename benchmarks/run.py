"""sample() end to end per configuration, n, backend and precision, against eager PyTorch;
the harness is ldseg_rt.bench, also `python -m ldseg_rt bench`. Options: --help.

    .venv/bin/python benchmarks/run.py --quick
"""
from ldseg_rt.bench import main

if __name__ == "__main__":
    main()
