"""Every command's --help runs and exits 0 (argparse formats help lazily: a stray '%' in a help
string crashes only when --help is asked for), and the defaults it states are the options'."""
import argparse
import subprocess
import sys

import pytest

from ldseg_rt import SampleOptions, VolumeOptions
from ldseg_rt.cli import build_parser, main


def subcommands() -> list[str]:
    """The subcommands `python -m ldseg_rt` offers, read from its parser."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


@pytest.mark.parametrize("command", subcommands())
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m ldseg_rt {command}")


@pytest.mark.parametrize("module", ["ldseg_rt", "ldseg_rt.export"])
def test_the_entry_points_have_help(module):
    """In a fresh interpreter, as a user runs them."""
    run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: python -m {module}")


def test_stated_defaults_are_the_options_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {SampleOptions().n})" in text and f"(default {VolumeOptions().max_batch})" in text
