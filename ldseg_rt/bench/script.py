"""What every script in benchmarks/ shares: its --no-write option, the folders it finds beside
it, and its ending, `publish`, which writes its own section of benchmarks/RESULTS.md (the command
that ran, the date, the machine, its table). A script benchmarks/GROUP/NAME.py owns the section
'GROUP/NAME'. The pytest-benchmark suites run through `run_suite`, which makes their table from
pytest-benchmark's figures."""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from .machine import describe_machine, machine_info
from .report import format_markdown_table, format_number, write_section

logger = logging.getLogger(__name__)
NO_WRITE = "--no-write"
SUITE_HEADER = ["benchmark", "median ms", "IQR ms", "rounds"]


def add_no_write(parser: argparse.ArgumentParser, writes: str = "benchmarks/RESULTS.md") -> None:
    parser.add_argument(NO_WRITE, action="store_true", help=f"print the figures only, without writing {writes}")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The script's arguments, --no-write among them; publish's note goes to the log."""
    add_no_write(parser)
    _log_to_stderr()
    return parser.parse_args(argv)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def section_of(script: str) -> tuple[Path, str]:
    """benchmarks/GROUP/NAME.py: the RESULTS.md beside its group folder, and the section 'GROUP/NAME'."""
    path = Path(script).resolve()
    return path.parents[1] / "RESULTS.md", f"{path.parent.name}/{path.stem}"


def command_of(script: str) -> str:
    """How the script is run, from the repository root."""
    return f"python benchmarks/{section_of(script)[1]}.py"


def shared_data(script: str) -> Path:
    """../shared/data beside the checkout that holds benchmarks/GROUP/NAME.py (the demo and official data)."""
    return Path(script).resolve().parents[3] / "shared" / "data"


def publish(script: str, table: str, *, no_write: bool, device: str = "cpu") -> None:
    """Rewrite the script's section of RESULTS.md with `table`, under a line naming the command
    (this process's arguments), the date and the machine (`device`: the one measured on)."""
    if no_write:
        return
    results, name = section_of(script)
    command = shlex.join([*command_of(script).split(), *sys.argv[1:]])
    machine = describe_machine(machine_info(torch.device(device)))
    write_section(results, name, f"`{command}`, {datetime.date.today().isoformat()}. Machine: {machine}.\n\n{table}")
    logger.info("rewrote section %s of %s", name, results)


def run_suite(script: str, argv=None) -> int:
    """pytest on a pytest-benchmark suite with the columns RESULTS.md keeps (options in argv, --help
    among them, go to pytest; --no-write is the scripts' own), then its section from the figures.
    Returns pytest's exit status."""
    import pytest

    argv = list(sys.argv[1:] if argv is None else argv)
    no_write = NO_WRITE in argv
    with tempfile.TemporaryDirectory(prefix="ldseg_rt-suite-") as folder:
        figures = Path(folder) / "benchmarks.json"
        status = pytest.main([script, "--benchmark-columns=median,iqr,rounds", f"--benchmark-json={figures}",
                              *(a for a in argv if a != NO_WRITE)])
        rows = suite_rows(json.loads(figures.read_text())) if figures.is_file() else []
    if status == 0 and rows:
        _log_to_stderr()
        publish(script, format_markdown_table(SUITE_HEADER, rows), no_write=no_write,
                device="cuda" if torch.cuda.is_available() else "cpu")
    return int(status)


def suite_rows(figures: dict) -> list[list[str]]:
    """One row per benchmark of pytest-benchmark's JSON (its times are in seconds)."""
    return [[b["name"], format_number(b["stats"]["median"] * 1e3), format_number(b["stats"]["iqr"] * 1e3),
             str(b["stats"]["rounds"])] for b in figures.get("benchmarks", [])]
