"""Ordinary mistakes on the command line end with one line `error: ...` and exit status 2,
never a traceback, and are refused before any work; `train` always leaves its checkpoint;
`python -m ldseg_rt.export --force` replaces a bundle."""
import subprocess
import sys

import pytest

from ldseg_rt.bundle import load_bundle, write_bundle
from ldseg_rt.cli import main
from ldseg_rt.configs import get_config
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.export.__main__ import main as export_main
from ldseg_rt.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ldseg_rt.training.trainer import Trainer, TrainSettings


def assert_one_line_error(err: str, *phrases: str) -> None:
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for phrase in phrases:
        assert phrase in err, err


@pytest.mark.parametrize("args, phrases", [
    (["demo", "--image", "{tmp}/absent.png"], ["absent.png"]),
    (["demo", "--model", "{tmp}/absent.pt"], ["absent.pt", "does not exist"]),
    (["train", "--checkpoint-every", "0", "--out", "{tmp}/t.pt"], ["checkpoint_every must be positive"]),
    (["train", "--out", "{tmp}/file/t.pt", "--steps", "1"], ["cannot be written", "is not a folder"]),
    (["calibrate-decoder", "{tmp}/absent.pt", "--out", "{tmp}/c.pt"], ["absent.pt", "does not exist"]),
    (["tune-sampler", "{tmp}/absent.pt", "--out", "{tmp}/c.pt"], ["absent.pt", "does not exist"]),
], ids=["demo-image", "demo-model", "train-checkpoint-every-0", "train-out-under-file", "calibrate-decoder",
        "tune-sampler"])
def test_a_mistake_is_one_line_and_exit_status_2(tmp_path, args, phrases):
    (tmp_path / "file").write_text("a regular file")
    before = sorted(tmp_path.iterdir())
    command = [sys.executable, "-m", "ldseg_rt", *(a.format(tmp=tmp_path) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, *phrases)
    assert "training" not in done.stdout  # refused before any step
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_checkpoint_every_0_is_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="checkpoint_every must be positive, got 0"):
        TrainSettings(checkpoint_every=0)


def test_train_with_no_steps_still_writes_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "t0.pt"
    main(["train", "--config", "small", "--steps", "0", "--out", str(out), "--device", "cpu"])
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_checkpoint(out).config.name == "small"
    assert read_checkpoint(out)["training"]["step"] == 0


@pytest.mark.parametrize("steps, every, saved", [(0, 2, [0]), (4, 2, [2, 4]), (5, 2, [2, 4, 5]), (1, 500, [1])])
def test_fit_saves_every_k_steps_and_once_at_the_end(steps, every, saved, monkeypatch):
    trainer = Trainer(get_config("small"), TrainSettings(steps=steps, checkpoint_every=every), "cpu")
    saves = []

    def fake_step(dataset):
        trainer.step += 1
        return {}

    monkeypatch.setattr(trainer, "train_step", fake_step)
    monkeypatch.setattr(trainer, "save", lambda path: saves.append(trainer.step))
    trainer.model.input_statistics = {}  # recorded already: there is no dataset here to take them from
    trainer.fit(None, "unused.pt", progress=False)
    assert saves == saved


def test_export_force_replaces_a_bundle_and_is_refused_without_it(small_model, tmp_path, capsys, monkeypatch):
    ckpt = save_checkpoint(small_model, tmp_path / "s.pt")
    out = tmp_path / "s.ldseg"
    write_bundle(out, {"classes": ["old"]}, {"old.bin": b"old"})  # an existing bundle, written cheaply

    def no_work(engine):
        raise AssertionError("export work began")

    with monkeypatch.context() as m:  # refused before the model is even loaded
        m.setattr("ldseg_rt.export.__main__.load_model", no_work)
        with pytest.raises(SystemExit) as exit_:
            export_main([str(ckpt), "--out", str(out), "--check-batches", "1"])
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "already exists", "--force")
    assert (out / "old.bin").read_bytes() == b"old"  # untouched

    export_main([str(ckpt), "--out", str(out), "--classes", "bg,c,d", "--check-batches", "1", "--force",
                 "--bf16-agreement", "0"])
    assert load_bundle(out).manifest["classes"] == ["bg", "c", "d"]
    assert not (out / "old.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ldseg", "s.pt"]  # no temporary left


def test_export_refuses_an_unwritable_out_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("a regular file")

    def no_work(engine):
        raise AssertionError("export work began")

    monkeypatch.setattr("ldseg_rt.export.__main__.load_model", no_work)
    with pytest.raises(SystemExit) as exit_:
        export_main(["--builtin", "phantom", "--out", str(tmp_path / "file" / "p.ldseg"), "--force"])
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "cannot be written", "is not a folder")
