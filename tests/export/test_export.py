"""Export to a bundle (ldseg_rt.export): checked ONNX graphs, weights, manifest, CLI."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ldseg_rt.bundle import load_bundle
from ldseg_rt.errors import ExportError, InvalidArgumentError
from ldseg_rt.export import export_bundle
from ldseg_rt.export.__main__ import main as export_main
from ldseg_rt.export.onnx_graphs import network_io, random_inputs
from ldseg_rt.models.checkpoint import TRAINING_ONLY, model_from_bundle, save_checkpoint

NETWORKS = ("image_encoder", "denoiser", "decoder")


def test_manifest_describes_the_model(builtin_bundle):
    m = load_bundle(builtin_bundle.path).manifest
    cfg = m["config"]
    assert m["family"] == "ldseg" and m["source"] == "builtin:phantom"
    assert m["classes"] == ["background", "class 1", "class 2"]
    assert m["diffusion"]["steps"] == cfg["steps"] and m["diffusion"]["timesteps"] == cfg["timesteps"]
    assert set(m["versions"]) >= {"ldseg_rt", "torch", "onnx", "onnxruntime"}
    assert sorted(m["files"]) == sorted(["weights.safetensors"] + [f"onnx/{n}.onnx" for n in NETWORKS])
    latent = ["batch", cfg["latent_channels"], 16, 16]
    assert m["networks"]["denoiser"]["inputs"]["z_t"]["shape"] == latent
    assert m["networks"]["denoiser"]["inputs"]["t"]["shape"] == ["batch"]
    assert m["networks"]["decoder"]["outputs"]["probs"]["shape"] == ["batch", 3, 128, 128]


@pytest.mark.parametrize("name", NETWORKS)
def test_graphs_pass_the_checker_and_were_compared_at_1_16_32(builtin_bundle, name):
    net = builtin_bundle.manifest["networks"][name]
    graph = onnx.load_from_string(builtin_bundle.onnx(name))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == list(net["inputs"])
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in graph.graph.input)
    assert sorted(int(b) for b in net["max_relative_error"]) == [1, 16, 32]
    assert max(net["max_relative_error"].values()) <= 1e-4


@pytest.mark.parametrize("batch", [3, 7])
def test_graphs_match_torch_at_other_batches(builtin_bundle, batch, rng):
    """An independent check of the exported graphs at batches the export did not try."""
    model = model_from_bundle(builtin_bundle)
    for name, spec in network_io(model).items():
        session = ort.InferenceSession(builtin_bundle.onnx(name), providers=["CPUExecutionProvider"])
        inputs = random_inputs(spec["inputs"], batch, rng, model.config.timesteps)
        got = session.run(None, inputs)[0].astype(np.float64)
        with torch.inference_mode():
            expected = spec["module"](*(torch.from_numpy(a) for a in inputs.values())).double().numpy()
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), name


def test_weights_round_trip_exactly(small_model, tmp_path):
    bundle = export_bundle(small_model, tmp_path / "s.ldseg", check_batches=(2,), progress=False)
    restored = model_from_bundle(load_bundle(bundle.path)).state_dict()
    original = {k: v for k, v in small_model.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    assert restored.keys() - original.keys() == {k for k in restored if k.startswith(TRAINING_ONLY)}
    assert all(torch.equal(restored[k], v) for k, v in original.items())


def test_disagreeing_graph_writes_nothing(small_model, tmp_path, monkeypatch):
    monkeypatch.setattr("ldseg_rt.export.exporter.relative_error", lambda *a: 3e-3)
    with pytest.raises(ExportError, match="differs from torch by 3.00e-03"):
        export_bundle(small_model, tmp_path / "s.ldseg", check_batches=(1,), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_class_names_must_match_the_model(small_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match="2 class names given for a model of 3 classes"):
        export_bundle(small_model, tmp_path / "s.ldseg", ["bg", "femur"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_checkpoint(small_model, tmp_path, capsys):
    ckpt = save_checkpoint(small_model, tmp_path / "knee.pt")
    export_main([str(ckpt), "--out", str(tmp_path / "knee.ldseg"), "--classes", "bg,femur,tibia",
                 "--check-batches", "1,5", "--bf16-agreement", "1"])
    out = capsys.readouterr().out
    assert "wrote" in out and "denoiser: onnxruntime vs torch" in out and "batch 5" in out
    bundle = load_bundle(tmp_path / "knee.ldseg")
    assert bundle.manifest["classes"] == ["bg", "femur", "tibia"]
    bf16 = bundle.manifest["precision"]["bf16"]
    assert bf16["random_images"] == 1 and bf16["n"] == 16 and f"bf16: consensus agrees with fp32 on {bf16['agreement']:.4%}" in out
    assert _refusal(capsys, [str(ckpt), "--out", str(tmp_path / "knee.ldseg"), "--check-batches", "1"],
                    "already exists")
    assert _refusal(capsys, [str(ckpt), "--out", str(tmp_path / "other.ldseg"), "--bf16-agreement", "-1"],
                    "--bf16-agreement must be >= 0")
    assert not (tmp_path / "other.ldseg").exists()


def _refusal(capsys, argv, message) -> bool:
    """The CLI refuses with exit status 2 and one line naming the mistake on stderr."""
    with pytest.raises(SystemExit) as exit_:
        export_main(argv)
    err = capsys.readouterr().err
    return exit_.value.code == 2 and err.startswith("error: ") and message in err


def test_cli_reports_bad_sources(tmp_path, capsys):
    assert _refusal(capsys, [str(tmp_path / "absent.pt")], "does not exist")
    assert _refusal(capsys, ["--builtin", "nope"], "no built-in model 'nope'")
    with pytest.raises(SystemExit):
        export_main(["--builtin", "phantom", "--check-batches", "0"])
    assert "batch sizes must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
