"""`python -m ldseg_rt demo` (timings and the figure) and `python -m ldseg_rt info` (a bundle in words)."""
import shutil

import pytest
import torch

from ldseg_rt.backends import openvino_available
from ldseg_rt.cli import main
from ldseg_rt.io.images import read_image
from ldseg_rt.models.checkpoint import builtin_names, save_checkpoint


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


def test_info_describes_a_bundle(builtin_bundle, capsys):
    main(["info", str(builtin_bundle.path)])
    printed = capsys.readouterr().out
    cfg = builtin_bundle.manifest["config"]
    assert f"{cfg['name']} configuration, 128x128 input with 1 channel(s), 3 classes: background, class 1, class 2" in printed
    assert f"{cfg['steps']} DDIM steps" in printed and "state 1x16x16" in printed
    assert "denoiser" in printed and "z_t ['batch', 1, 16, 16]" in printed
    assert "files: 4, sha256 verified" in printed
    if not torch.cuda.is_available():
        engine = "openvino" if openvino_available() else "onnxruntime"
        assert f"backend='auto' runs it with {engine} (fp32) on cpu" in printed


def test_info_refuses_a_corrupt_bundle(builtin_bundle, tmp_path, capsys):
    copy = shutil.copytree(builtin_bundle.path, tmp_path / "copy.ldseg")
    graph = copy / "onnx" / "decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(copy)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "corrupt: onnx/decoder.onnx does not match its sha256" in err
    assert "Traceback" not in err
