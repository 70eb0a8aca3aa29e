"""The sections of benchmarks/RESULTS.md: `write_section` replaces exactly one named section and
keeps every other byte, appends a section it does not find, and never leaves half a file; each
script's ending writes its own section; and every script in benchmarks/ starts (its --help, or for
the pytest-benchmark suites, their collection)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ldseg_rt.bench import report, script
from ldseg_rt.bench.report import write_section

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.rglob("*.py"))
BEFORE = "# Results\r\n\nhand-written, CRLF kept\r\n\n<!-- begin other -->\n\nuntouched\n\n<!-- end other -->\n\n"
AFTER = "\n\nmore prose\n<!-- end a -->, twice, only the first ends the section\n"


def section(name: str, body: str) -> str:
    return f"<!-- begin {name} -->\n\n{body}\n\n<!-- end {name} -->"


def test_an_existing_section_is_replaced_exactly(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_bytes((BEFORE + section("a", "| old |\n| --- |") + AFTER).encode())
    write_section(md, "a", "| new |\n| --- |\n| 1 |\n")
    assert md.read_bytes() == (BEFORE + section("a", "| new |\n| --- |\n| 1 |") + AFTER).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary file left


def test_a_missing_section_is_appended_under_its_name(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_bytes(BEFORE.encode())
    write_section(md, "speed/x", "table")
    assert md.read_bytes() == (BEFORE + "## speed/x\n\n" + section("speed/x", "table") + "\n").encode()
    write_section(tmp_path / "new.md", "speed/x", "table")
    assert (tmp_path / "new.md").read_text() == "## speed/x\n\n" + section("speed/x", "table") + "\n"


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    md = tmp_path / "RESULTS.md"
    md.write_bytes((BEFORE + section("a", "old")).encode())

    def refuse(*args):
        raise OSError("disk full")
    monkeypatch.setattr(report.os, "replace", refuse)
    with pytest.raises(OSError):
        write_section(md, "a", "new")
    assert md.read_bytes() == (BEFORE + section("a", "old")).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]


def test_publish_writes_the_scripts_own_section(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n")
    fake = str(tmp_path / "benchmarks" / "speed" / "x.py")  # publish needs the path only
    monkeypatch.setattr(sys, "argv", [fake, "--images", "3"])
    script.publish(fake, "| t |\n| --- |", no_write=True)
    assert results.read_text() == "# Results\n"
    script.publish(fake, "| t |\n| --- |", no_write=False)
    text = results.read_text()
    body = text.split("<!-- begin speed/x -->\n\n", 1)[1].split("\n\n<!-- end speed/x -->", 1)[0]
    first, table = body.split("\n\n")
    assert first.startswith("`python benchmarks/speed/x.py --images 3`, ") and " Machine: " in first
    assert table == "| t |\n| --- |"


def test_suite_rows_take_pytest_benchmarks_seconds_as_ms():
    figures = {"benchmarks": [{"name": "test_a[0.0]", "stats": {"median": 0.0051, "iqr": 0.00025, "rounds": 120}}]}
    assert script.suite_rows(figures) == [["test_a[0.0]", "5.1", "0.25", "120"]]


def test_every_script_sits_in_a_group_and_needs_no_sys_path_tricks():
    assert len(SCRIPTS) > 10
    for path in SCRIPTS:
        where = path.relative_to(BENCHMARKS)
        assert len(where.parts) == 2 or where.name == "gpu_check.py", where
        assert "sys.path" not in path.read_text(), where


# Runs in one fresh interpreter, so that the scripts share one import of torch and the rest:
# each script with --help (exit 0, something printed); a pytest-benchmark suite, whose --help is
# pytest's and would not import the file, collected instead.
START_ALL = """
import contextlib, io, json, runpy, sys
import pytest
failed = {}
for path in sys.argv[1:]:
    out = io.StringIO()
    suite = "run_suite(__file__)" in open(path).read()
    try:
        with contextlib.redirect_stdout(out):
            if suite:
                code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", path])
            else:
                sys.argv = [path, "--help"]
                runpy.run_path(path, run_name="__main__")
                code = "no exit"
    except SystemExit as e:
        code = e.code
    except Exception as e:
        code = repr(e)
    if code not in (0, None) or not out.getvalue().strip():
        failed[path] = [str(code), out.getvalue()[-2000:]]
print(json.dumps(failed))
"""


def test_every_script_starts():
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    run = subprocess.run([sys.executable, "-c", START_ALL, *map(str, SCRIPTS)], capture_output=True, text=True,
                         cwd=BENCHMARKS.parent, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}


def test_every_citation_in_the_docs_names_a_section_of_results_md():
    """The docs cite figures as (benchmarks/RESULTS.md, section NAME): a generated section's name
    or a hand-written heading in quotes; a renamed section must not leave a citation dangling."""
    results = (BENCHMARKS / "RESULTS.md").read_text()
    sections = set(re.findall(r"<!-- begin (\S+) -->", results)) | set(re.findall(r"^## (.+)$", results, re.M))
    root = BENCHMARKS.parent
    cited = [(page.name, quoted or name) for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
             for quoted, name in re.findall(r'RESULTS\.md, section (?:"([^"]+)"|([\w/]+))', page.read_text())]
    assert len(cited) > 20
    assert [c for c in cited if c[1] not in sections] == []
