"""The package's architecture holds: the runtime imports no training code, data generator,
evaluation code or plotting; io/ reads and writes files and knows nothing of who segments; each
run-level default is defined once (ldseg_rt/options.py); and the move into folders changed no
sample (latents recorded with the flat layout, before the move, for both families)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ldseg_rt import Segmenter

RECORDED = Path(__file__).parent / "fixtures" / "latents_before_layout.npz"
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ldseg_rt"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "export").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])

PROBE = """
import json, sys
import numpy as np
import ldseg_rt
seg = ldseg_rt.Segmenter("builtin:phantom")
seg.sample(np.random.default_rng(0).random((40, 52)), n=2, seed=1)
amb = ldseg_rt.Segmenter.from_config("amb_small", backend="torch")
amb.sample(np.random.default_rng(0).random((30, 30)), n=2, seed=1)
print(json.dumps(sorted(sys.modules)))
"""


def test_runtime_imports_no_training_data_evaluation_or_plotting():
    loaded = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout)
    assert "ldseg_rt.segmenter" in loaded and "ldseg_rt.diffusion.pixel_schedule" in loaded  # the probe ran both
    forbidden = [m for m in loaded if m.split(".")[:2] in (["ldseg_rt", "training"], ["ldseg_rt", "data"],
                                                            ["ldseg_rt", "evaluation"], ["ldseg_rt", "cli"])
                 or m.split(".")[0] == "matplotlib"]
    assert forbidden == []


def test_the_service_imports_no_command_line_training_or_plotting():
    """serve -> {segmenter, io}; and the runtime alone loads none of the service's stack."""
    probe = ("import json, sys\nimport ldseg_rt\nbare = sorted(sys.modules)\n"
             "import ldseg_rt.serve.service, ldseg_rt.serve.oip, ldseg_rt.serve.dicom_node\n"
             "print(json.dumps([bare, sorted(sys.modules)]))")
    bare, served = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                             check=True).stdout)
    assert not [m for m in bare if m.split(".")[0] in ("fastapi", "uvicorn", "pynetdicom", "prometheus_client")]
    assert "ldseg_rt.serve.dicom_node" in served
    assert [m for m in served if m.split(".")[:2] in (["ldseg_rt", "cli"], ["ldseg_rt", "training"],
                                                       ["ldseg_rt", "data"], ["ldseg_rt", "evaluation"])
            or m.split(".")[0] == "matplotlib"] == []


def test_same_samples_as_before_the_layout_move():
    """Recorded with the flat layout on an AVX2 CPU, where these are bit-identical; another CPU's
    convolution kernels may round differently, so elsewhere the latents must agree to float
    tolerance. Each recorded image already spans its own intensity window (it was clipped at its
    1st/99th percentiles), so the robust intensity scaling that came after the move scales it as
    min-max scaling did."""
    recorded = np.load(RECORDED)
    ldseg = Segmenter("builtin:phantom", backend="torch").sample(recorded["ldseg_image"], n=4, seed=123)
    ambiguous = Segmenter.from_config("amb_small", seed=0, backend="torch").sample(recorded["ambiguous_image"], n=4,
                                                                                   seed=7)
    for family, result in (("ldseg", ldseg), ("ambiguous", ambiguous)):
        np.testing.assert_allclose(result.latents, recorded[f"{family}_latents"], rtol=0, atol=1e-4, err_msg=family)
        assert (result.samples == recorded[f"{family}_samples"]).mean() > 0.999, family


def imported_modules(path: Path) -> set[str]:
    """The ldseg_rt modules a source file imports (relative imports resolved), at any depth."""
    package = ["ldseg_rt", *path.relative_to(PACKAGE).parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "ldseg_rt"}


def test_io_reads_and_writes_files_and_knows_nothing_of_who_segments():
    files = sorted((PACKAGE / "io").glob("*.py"))
    assert len(files) > 5
    above = ("segmenter", "workflow", "backends", "pipeline", "serve", "distributed", "cli", "training")
    for path in files:
        wrong = [m for m in imported_modules(path) if m.split(".")[1:2] and m.split(".")[1] in above]
        assert wrong == [], path.name
        assert "segmenter" not in path.read_text().lower(), path.name


RUN_SETTINGS = ("n", "max_batch", "memory_limit", "return_samples", "max_n", "tolerance")


def is_written_value(node) -> bool:
    """A default written out (16, 8 * 2 ** 30), not None and not a name."""
    return isinstance(node, ast.BinOp) or isinstance(node, ast.Constant) and node.value is not None


def literal_defaults(path: Path):
    """(where, name) of every parameter, dataclass field or argparse flag named as a run setting
    whose default is written as a value rather than taken from ldseg_rt.options."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
            pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
            yield from ((f"{node.name}({a.arg}=...)", a.arg) for a, d in pairs
                        if a.arg in RUN_SETTINGS and is_written_value(d))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in RUN_SETTINGS and is_written_value(node.value):
            yield f"field {node.target.id}", node.target.id
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if {"-n", "--max-batch", "--memory-limit"} & set(flags) and is_written_value(default):
                yield f"flag {flags}", flags[0]


def test_each_run_default_is_defined_once():
    """n, max_batch, memory_limit and n='auto''s settings: their defaults live in ldseg_rt/options.py
    alone (and the constants it defines); everyone else takes them from there."""
    owner = PACKAGE / "options.py"
    assert sorted(name for _, name in literal_defaults(owner)) == ["max_n", "return_samples", "return_samples",
                                                                    "tolerance"]
    found = [(str(path.relative_to(ROOT)), where) for path in SOURCES if path != owner
             for where, _ in literal_defaults(path)]
    assert found == []
