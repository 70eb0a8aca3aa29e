"""The Ray batch's parts that need no Ray cluster: the package's imports, the clear error when
Ray is missing, and the actor class run in this process (its rows, its outputs equal to
`segment`'s, to a folder and to a file-system URI)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from distributed_cases import MODEL, assert_exactly_once, files_sha256
from ldseg_rt.cli import main
from ldseg_rt.errors import BackendError
from ldseg_rt import SegmentOptions
from ldseg_rt.io.cases import find_cases

OPTIONS = SegmentOptions(n=2, steps=4, progress=False)  # conftest.FLAGS as options


def test_ldseg_rt_and_its_distributed_package_import_no_ray():
    probe = ("import json, sys\nimport ldseg_rt\nbare = sorted(sys.modules)\nimport ldseg_rt.distributed\n"
             "print(json.dumps([bare, sorted(sys.modules)]))")
    bare, loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                             check=True).stdout)
    assert not [m for m in bare if m.split(".")[0] in ("ray", "pyarrow", "pandas")]
    assert "ldseg_rt.distributed.worker" in loaded and not [m for m in loaded if m.split(".")[0] == "ray"]
    # distributed -> {segmenter, io}: never the command line, training, data generators or evaluation
    assert [m for m in loaded if m.split(".")[:2] in (["ldseg_rt", "cli"], ["ldseg_rt", "training"],
                                                      ["ldseg_rt", "data"], ["ldseg_rt", "evaluation"])
            or m.split(".")[0] == "matplotlib"] == []


def test_without_ray_installed_ray_runs_are_refused_clearly(study, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    from ldseg_rt.distributed import segment_on_ray
    with pytest.raises(BackendError, match=r"pip install 'ldseg_rt\[ray\]'"):
        segment_on_ray([str(study)], MODEL, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(study), "-m", MODEL, "-o", str(tmp_path / "out"), "--ray", "--workers", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray needs Ray Data") and "ldseg_rt[ray]" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_worker_flags_without_ray_are_refused(study, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(study), "-m", MODEL, "-o", str(tmp_path / "out"), "--workers", "2"])
    assert exit_.value.code == 2 and "apply to --ray runs only" in capsys.readouterr().err


def batch(cases, seed=11):
    return {"index": np.arange(len(cases)), "name": np.array([c.name for c in cases], dtype=object),
            "path": np.array([str(c.path) for c in cases], dtype=object),
            "kind": np.array([c.kind for c in cases], dtype=object),
            "seed": np.array([str(seed)] * len(cases), dtype=object)}


@pytest.mark.parametrize("as_uri,name", [(False, "slide"), (True, "vol0")], ids=["folder", "file-uri"])
def test_the_actor_class_writes_what_segment_writes(study, reference, tmp_path, as_uri, name):
    """CaseWorker in this process: the case once, byte for byte the single-process run's; to a
    URI (a volume: .nii.gz files, which a file system must not compress again) the case's files
    are uploaded as they are and replaced whole, an earlier run's extra file removed."""
    from ldseg_rt.distributed import CaseWorker
    cases = [c for c in find_cases([str(study)]) if c.name == name]
    assert len(cases) == 1
    out = tmp_path / "out"
    worker = CaseWorker(MODEL, out.as_uri() if as_uri else str(out), OPTIONS)
    rows = worker(batch(cases))
    assert list(rows["status"]) == ["ok"] * len(cases) and list(rows["index"]) == list(range(len(cases)))
    assert {int(s) for s in rows["seed"]} == {11} and len(set(rows["worker"])) == 1
    assert "load_seconds" in rows and "sample" in json.loads(rows["timings"][0])  # recorded; their values are speed
    for case_name, outputs in zip(rows["case"], rows["outputs"]):
        assert json.loads(outputs) == files_sha256(reference / case_name)
    assert_exactly_once(out, [c.name for c in cases], reference)

    (out / cases[0].name / "stale.npy").write_bytes(b"from an earlier run")
    again = worker(batch(cases[:1]))
    assert again["status"][0] == "ok"
    assert not (out / cases[0].name / "stale.npy").exists()  # replaced whole: a folder by a rename, a URI's by upload
    assert_exactly_once(out, [c.name for c in cases], reference)


def test_the_actor_class_reports_bad_cases_and_a_model_it_cannot_load(study, tmp_path):
    from ldseg_rt.distributed import CaseWorker
    (tmp_path / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    cases = find_cases([str(tmp_path / "broken.nii.gz"), str(study / "slide.png")])
    rows = CaseWorker(MODEL, str(tmp_path / "out"), OPTIONS)(batch(cases))
    assert list(rows["status"]) == ["failed", "ok"] and "broken.nii.gz: cannot read the file" in rows["detail"][0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slide"]

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rows = CaseWorker(str(bad), str(tmp_path / "out2"), OPTIONS)(batch(cases))
    assert list(rows["status"]) == ["failed", "failed"]
    assert all(f"cannot load model {str(bad)!r}" in d for d in rows["detail"])
