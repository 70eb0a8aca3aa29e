"""The command line: `python -m ldseg_rt demo|segment|serve|info|evaluate|bench|train|calibrate-decoder|tune-sampler`
(export: `python -m ldseg_rt.export`). Ordinary mistakes (a missing file, a bad value, an
unwritable output) end with one line saying what is wrong and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import LdsegError
from . import demo, evaluate, fine_tuning, info, segment, serve, train

# What a user's mistake raises, as opposed to a bug: reported in one line.
USER_ERRORS = (LdsegError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def run_command(run, args) -> None:
    """run(args), turning a user's mistake into one line on stderr and exit status 2, and
    Ctrl-C into exit status 130."""
    try:
        run(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m ldseg_rt` and every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m ldseg_rt")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    segment.add_parser(sub)
    serve.add_parser(sub)
    evaluate.add_parser(sub)
    info.add_parser(sub)
    from .. import bench as bench_harness
    bench = bench_harness.add_arguments(sub.add_parser(
        "bench", help="benchmark sample() per configuration, n, backend and precision against eager PyTorch; "
                      "print the table, rewrite its section of benchmarks/RESULTS.md (speed/end_to_end) and "
                      "results.json"))
    bench.set_defaults(run=bench_harness.run)
    train.add_parser(sub)
    fine_tuning.add_parsers(sub)
    return parser


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    run_command(args.run, args)
