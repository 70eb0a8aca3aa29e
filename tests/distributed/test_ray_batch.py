"""`segment --ray` on a local Ray of this 2-core machine: two actors, a small object store, a
handful of small synthetic cases. Every case comes out exactly once and byte for byte what the
plain single-process `segment` writes with the same seeds: with two workers, with actors killed
mid-case (from inside, half-way through writing a case, and from outside by pid), after an
interrupted run finished by a rerun with --continue, and with a case that kills every actor it
meets (reported lost, the rest done). Each run is bounded: a hang fails the test."""
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import ray

from distributed_cases import FLAGS, MODEL, assert_exactly_once, files_sha256, write_cases
from ldseg_rt import RayOptions, SegmentOptions
from ldseg_rt.cli import main
from ldseg_rt.distributed import CaseWorker, segment_on_ray

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own, of its own fields
OPTIONS = SegmentOptions(n=2, steps=4, progress=False)  # FLAGS as options; the seed (--seed 11) below
HANG_GUARD = 600  # seconds after which a run that gave no answer is taken for hung (a deadlock guard, not a speed limit)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module: 2 CPUs, a 256 MB object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=256 * 2 ** 20, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()


def bounded(run, seconds: float = HANG_GUARD):
    """run() in a thread; its result or its exception, or a test failure if it hangs."""
    answer = {}

    def target():
        try:
            answer["value"] = run()
        except BaseException as e:  # noqa: B902 (KeyboardInterrupt and SystemExit are answers too)
            answer["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the Ray run hung: no result and no error after {seconds} s")
    if "error" in answer:
        raise answer["error"]
    return answer["value"]


def case_names(study: Path) -> list[str]:
    from ldseg_rt.io.cases import find_cases
    return [c.name for c in find_cases([str(study)])]


def killing_worker(marker: Path, victim: str, every_time: bool = False):
    """A CaseWorker that kills its own process (SIGKILL) half-way through writing case `victim`:
    after the first NIfTI file of the case, before the rest and before its result.json. Once
    (the first try; the marker remembers it across processes), or on every try. The marker
    lists the pids killed."""
    class KillingWorker(CaseWorker):
        def run(self, case, seed):
            if case.name == victim and (every_time or not marker.exists()):
                import ldseg_rt.io.nifti as nifti
                write_nifti = nifti.write_nifti

                def write_then_die(path, array, like):
                    write_nifti(path, array, like)
                    with open(marker, "a") as f:
                        f.write(f"{os.getpid()}\n")
                    os.kill(os.getpid(), signal.SIGKILL)

                nifti.write_nifti = write_then_die
            return super().run(case, seed)
    return KillingWorker


def dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_write_what_one_process_writes(study, reference, tmp_path, capsys):
    """The CLI with --ray and 2 workers on a CSV study list with a broken case: the broken one
    reported, the rest byte for byte the single-process run's; the manifest lists every case."""
    (tmp_path / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    names = case_names(study)
    rows = "path\n" + "".join(f"{p}\n" for p in sorted(study.iterdir())) + "broken.nii.gz\n"
    (tmp_path / "cases.csv").write_text(rows)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        bounded(lambda: main(["segment", str(tmp_path / "cases.csv"), "-m", MODEL, "-o", str(out), *FLAGS,
                              "--ray", "--workers", "2"]))
    assert exit_.value.code == 1  # one case failed, as `segment` says it
    printed = capsys.readouterr().out
    assert f"{len(names)} of {len(names) + 1} case(s) done, 1 failed" in printed
    assert "broken.nii.gz: cannot read the file" in printed and "cases/hour" in printed
    assert "time per stage" in printed and "2 worker(s) of 1 CPU, 0 GPU" in printed
    assert_exactly_once(out, names, reference)

    manifest = json.loads((out / "manifest.json").read_text())
    by_case = {c["case"]: c for c in manifest["cases"]}
    assert list(by_case) == sorted(p.name.split(".")[0] for p in study.iterdir()) + ["broken"]  # the list's order
    assert by_case["broken"]["status"] == "failed" and "cannot read" in by_case["broken"]["reason"]
    for name in names:
        case = by_case[name]
        assert case["status"] == "ok" and case["seed"] == 11 and case["output"] == str(out / name)
        assert case["outputs"] == files_sha256(reference / name)
        assert case["worker"].split(":")[1].isdigit() and "sample" in case["timings_ms"]
    summary = manifest["summary"]
    assert (summary["ok"], summary["failed"], summary["workers"]) == (len(names), 1, 2)
    assert "cases_per_hour" in summary and set(summary["stage_seconds"]) >= {"read", "sample", "write"}
    table = (out / "manifest.csv").read_text().splitlines()
    assert table[0].startswith("case,status,seed,seconds,worker,output,outputs_sha256,reason")
    assert len(table) == len(names) + 2


def test_killed_workers_lose_nothing_and_duplicate_nothing(study, reference, tmp_path):
    """One actor kills itself half-way through writing a case, and the driver kills another
    actor by pid after the first result: Ray restarts them and retries their cases; each case
    is written once, whole, and as the single-process run wrote it."""
    names = case_names(study)
    marker = tmp_path / "killed"
    killed_from_outside = []

    def kill_first_worker(outcome):
        if not killed_from_outside:
            pid = int(outcome.worker.rsplit(":", 1)[1])
            killed_from_outside.append(pid)
            os.kill(pid, signal.SIGKILL)

    out = tmp_path / "out"
    report = bounded(lambda: segment_on_ray([str(study)], MODEL, out, options=SegmentOptions.of(OPTIONS, seed=11),
                                            cluster=RayOptions(workers=2, progress=False),
                                            worker=killing_worker(marker, "vol2"),
                                            on_case=kill_first_worker))
    assert [o.status for o in report.outcomes] == ["ok"] * len(names), [o.detail for o in report.outcomes]
    assert_exactly_once(out, names, reference)
    killed_inside = int(marker.read_text().split()[0])
    assert dead(killed_inside) and dead(killed_from_outside[0])
    vol2 = next(o for o in report.outcomes if o.case == "vol2")
    assert vol2.worker.rsplit(":", 1)[1] != str(killed_inside)  # retried by another process
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["case"] for c in manifest["cases"]] == names and manifest["summary"]["ok"] == len(names)


def test_an_interrupted_run_is_finished_by_a_rerun(study, reference, tmp_path, capsys):
    """A run stopped after its first case (as Ctrl-C stops it), into an OUT where an earlier
    killed writer left a half-written folder: the rerun with --continue segments only the
    cases missing, leaves the finished ones untouched, and cleans the leftover."""
    names = case_names(study)
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = out / f".vol1.{gone.pid}.0123456789abcdef0123456789abcdef.tmp"
    leftover.mkdir()
    (leftover / "mask.nii.gz").write_bytes(b"half a file")

    def interrupt(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bounded(lambda: segment_on_ray([str(study)], MODEL, out, options=SegmentOptions.of(OPTIONS, seed=11),
                                       cluster=RayOptions(workers=2, progress=False), resume=True, on_case=interrupt))
    first = json.loads((out / "manifest.json").read_text())
    assert first["summary"]["interrupted"] and first["summary"]["ok"] >= 1
    done = {p.name: (p / "result.json").stat().st_mtime_ns for p in out.iterdir() if (p / "result.json").is_file()}
    assert 1 <= len(done) < len(names)
    for case in first["cases"]:  # what the manifest says is what OUT holds
        assert (case["status"] == "ok") == (case["case"] in done), case
        assert case["status"] == "ok" or case["reason"].startswith("not run: the batch was interrupted"), case

    bounded(lambda: main(["segment", str(study), "-m", MODEL, "-o", str(out), *FLAGS, "--ray", "--workers", "2",
                          "--continue"]))
    printed = capsys.readouterr().out
    assert f"{len(names)} of {len(names)} case(s) done, 0 failed" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    status = {c["case"]: c["status"] for c in manifest["cases"]}
    assert {n for n, s in status.items() if s == "skipped"} == set(done)
    assert {n for n, s in status.items() if s == "ok"} == set(names) - set(done)
    assert {p.name: (p / "result.json").stat().st_mtime_ns for p in out.iterdir() if p.name in done} == done
    assert all(c["outputs"] == files_sha256(reference / c["case"]) for c in manifest["cases"])  # skipped ones too
    assert_exactly_once(out, names, reference)  # the dead writer's leftover is gone


def test_a_case_that_kills_every_worker_is_reported_lost(tmp_path):
    """A case whose actor dies on every try is tried 1 + retries times, then reported lost; the
    other cases are done. Here OUT is a file:// URI (the object-store path of the writers)."""
    study = write_cases(tmp_path / "cases", volumes=2, seed=3)
    marker = tmp_path / "killed"
    uri = (tmp_path / "out").as_uri()
    report = bounded(lambda: segment_on_ray([str(study)], MODEL, uri, options=SegmentOptions.of(OPTIONS, seed=5),
                                            cluster=RayOptions(workers=2, retries=1, progress=False),
                                            worker=killing_worker(marker, "vol0", every_time=True)))
    status = {o.case: (o.status, o.detail) for o in report.outcomes}
    assert status["vol0"][0] == "failed" and status["vol0"][1].startswith("lost: its worker died on each of 2 tries")
    assert status["vol1"] == ("ok", f"{uri}/vol1") and status["slide"][0] == "ok"
    assert len(marker.read_text().split()) == 2
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json", "slide", "vol1"]
    assert json.loads((out / "vol1" / "result.json").read_text())["outputs"] == files_sha256(out / "vol1")
