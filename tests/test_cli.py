"""`python -m ldseg_rt demo`: prints the stages' timings and writes the figure."""
import numpy as np

from ldseg_rt.checkpoint import builtin_names, save_checkpoint
from ldseg_rt.cli import main
from ldseg_rt.io import read_image


def test_demo_writes_figure_and_prints_timings(small_model, tmp_path, capsys):
    ckpt = save_checkpoint(small_model, tmp_path / "m.pt")
    out = tmp_path / "figs" / "demo.png"
    main(["demo", "--model", str(ckpt), "-n", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    for stage in ("preprocess", "encode", "sample", "decode", "postprocess", "total"):
        assert f"  {stage}" in printed
    assert "consensus Dice against the example's label: class 1" in printed
    figure = read_image(out)
    assert figure.ndim == 3 and figure.shape[2] == 3 and figure.shape[0] > 300
    assert figure.std() > 10  # a picture, not a blank canvas


def test_builtin_model_is_shipped():
    assert "phantom" in builtin_names()
