"""Importing the official LDSeg Keras weights: every network reproduces the official TF outputs, and
malformed files are refused naming the layer. Needs ../shared/data/ldseg-official (skipped without)."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ldseg_rt import Segmenter
from ldseg_rt.bundle import load_bundle
from ldseg_rt.cli import main as cli_main
from ldseg_rt.configs import get_config
from ldseg_rt.errors import ModelLoadError
from ldseg_rt.export.__main__ import main as export_main
from ldseg_rt.export.keras_weights import FILES, load_keras_model, load_network
from ldseg_rt.models import build_model
from ldseg_rt.models.checkpoint import load_checkpoint, read_checkpoint
from ldseg_rt.pipeline.preprocess import OFFICIAL, prepare
from ldseg_rt.training.dataset import build_dataset

OFFICIAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ldseg-official"
REFERENCE = OFFICIAL_DATA / "reference"
DEMO = OFFICIAL_DATA.parent / "ldseg-demo" / "GlaS"
TOLERANCE = 1e-4  # max |ours - official| / max |official|

if not OFFICIAL_DATA.is_dir():
    pytest.skip(f"official LDSeg weights not found at {OFFICIAL_DATA}", allow_module_level=True)


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    ours = ours.detach().double().numpy()
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def nchw(name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.load(REFERENCE / name), -1, 1)))


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """The three published networks and the random-valued denoiser, laid out as the importer expects."""
    folder = tmp_path_factory.mktemp("keras")
    for network, file in FILES.items():
        source = REFERENCE / "denoiser_random.hdf5" if network == "denoiser" else OFFICIAL_DATA / "savedModels" / file
        (folder / file).symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def model(weights_dir):
    return load_keras_model(weights_dir, "glas512")


def test_image_encoder_matches_official(model):
    with torch.no_grad():  # float32: float64 at 512x512 costs seconds for no information (fp32 lands ~1e-6)
        out = model.image_encoder(nchw("glas_image.npy"))
    assert relative_error(nhwc(out), np.load(REFERENCE / "image_encoder_out_f64.npy")) < TOLERANCE


def test_label_encoder_matches_official(model):
    label = torch.from_numpy(np.load(REFERENCE / "glas_label.npy")).double()[:, None]
    with torch.no_grad():
        out = model.label_encoder.double()(label)
    model.label_encoder.float()
    assert relative_error(nhwc(out), np.load(REFERENCE / "label_encoder_out_f64.npy")) < TOLERANCE


def test_decoder_matches_official(model):
    with torch.no_grad():
        out = model.decoder(nchw("decoder_in.npy"))
    assert relative_error(nhwc(out), np.load(REFERENCE / "decoder_out_f64.npy")) < TOLERANCE


def test_denoiser_matches_official(model):
    t = torch.from_numpy(np.load(REFERENCE / "denoiser_in_t.npy"))
    with torch.no_grad():
        out = model.denoiser.double()(nchw("denoiser_in_zt.npy").double(), nchw("denoiser_in_zi.npy").double(), t)
    model.denoiser.float()
    assert relative_error(nhwc(out), np.load(REFERENCE / "denoiser_out.npy")) < TOLERANCE


@pytest.mark.skipif(not DEMO.is_dir(), reason=f"LDSeg demo images not found at {DEMO}")
def test_official_preprocessing_reproduces_official_loader():
    cfg = get_config("glas512")
    for case, want in zip((1, 3), np.load(REFERENCE / "glas_image.npy")):  # the README's cases
        image = np.asarray(Image.open(DEMO / "Image" / f"Case{case}.bmp"))
        np.testing.assert_array_equal(prepare(image, cfg, mode=OFFICIAL).pixels.transpose(1, 2, 0), want)


def glas_case(folder: Path, case: int) -> None:
    """GlaS case `case` as a training pair in `folder`/img and `folder`/lab, its label binarised as LDSeg does."""
    for sub in ("img", "lab"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "img" / f"Case{case}.bmp").symlink_to(DEMO / "Image" / f"Case{case}.bmp")
    label = np.asarray(Image.open(DEMO / "Label" / f"Case{case}_label.bmp")) > 0
    Image.fromarray(label.astype(np.uint8)).save(folder / "lab" / f"Case{case}_label.png")


@pytest.mark.skipif(not DEMO.is_dir(), reason=f"LDSeg demo images not found at {DEMO}")
def test_training_examples_in_official_mode_are_the_official_loaders(tmp_path):
    for case in (1, 3):
        glas_case(tmp_path, case)
    data = build_dataset(get_config("glas512"), str(tmp_path / "img"), str(tmp_path / "lab"), mode=OFFICIAL)
    for (image, label), want_image, want_label in zip(data, np.load(REFERENCE / "glas_image.npy"),
                                                      np.load(REFERENCE / "glas_label.npy")):
        np.testing.assert_array_equal(image.transpose(1, 2, 0), want_image)
        np.testing.assert_array_equal(label, want_label)


@pytest.mark.skipif(not DEMO.is_dir(), reason=f"LDSeg demo images not found at {DEMO}")
def test_cli_trains_a_denoiser_for_the_published_networks(tmp_path, weights_dir, capsys):
    official = tmp_path / "official"  # what the authors published: no denoiser
    official.mkdir()
    for network, file in FILES.items():
        if network != "denoiser":
            (official / file).symlink_to(weights_dir / file)
    glas_case(tmp_path, 1)
    out = tmp_path / "run.pt"
    cli_main(["train", "--config", "glas512", "--from-keras", str(official), "--denoiser-only", "--data",
              str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--steps", "2", "--batch-size", "2",
              "--no-augment", "--out", str(out), "--device", "cpu"])
    payload = read_checkpoint(out)
    assert payload["preprocessing"] == OFFICIAL and payload["training"]["settings"]["denoiser_only"]
    trained, published = load_checkpoint(out), load_keras_model(weights_dir, "glas512")
    for network in ("image_encoder", "label_encoder", "decoder"):  # frozen, as published
        ours, theirs = getattr(trained, network).state_dict(), getattr(published, network).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), network
    start = build_model(get_config("glas512"), seed=0).denoiser.state_dict()  # --seed 0 initialises it
    assert not all(torch.equal(v, start[k]) for k, v in trained.denoiser.state_dict().items())
    assert Segmenter(str(out)).preprocessing == OFFICIAL


def test_missing_file_is_refused(tmp_path, weights_dir):
    for file in ("imageEncoder.hdf5", "labelDecoder.hdf5"):
        (tmp_path / file).symlink_to(weights_dir / file)
    with pytest.raises(ModelLoadError, match="denoiser.hdf5"):
        load_keras_model(tmp_path, "glas512")


def edited_label_encoder(tmp_path: Path, edit) -> Path:
    """A copy of the official labelEncoder.hdf5, changed by edit(file) before it is closed."""
    out = tmp_path / "labelEncoder.hdf5"
    with h5py.File(OFFICIAL_DATA / "savedModels" / "labelEncoder.hdf5", "r") as src, h5py.File(out, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        dst.attrs.update(src.attrs)
        edit(dst)
    return out


def load_label_encoder(path: Path) -> None:
    cfg = get_config("glas512")
    load_network(build_model(cfg, 0).label_encoder, path, "label_encoder", cfg)


def layer_names(f) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]


def set_layer_names(f, names: list[str]) -> None:
    f.attrs["layer_names"] = np.array([n.encode() for n in names])  # fixed-length bytes, as Keras writes them


def drop_layer(f, name: str) -> None:
    del f[name]
    set_layer_names(f, [n for n in layer_names(f) if n != name])


def rename_layer(f, old: str, new: str) -> None:
    f.move(old, new)
    set_layer_names(f, [new if n == old else n for n in layer_names(f)])


def add_layer(f, copy_of: str, name: str) -> None:
    f.copy(f[copy_of], f, name=name)
    set_layer_names(f, [*layer_names(f), name])


def test_edited_copy_still_loads(tmp_path):
    load_label_encoder(edited_label_encoder(tmp_path, lambda f: None))  # the refusals below are the edits'


@pytest.mark.parametrize("edit, named", [
    (lambda f: drop_layer(f, "conv2d_1"), "conv2d_1"),
    (lambda f: drop_layer(f, "batch_normalization_14"), "blocks.8.bn_shortcut.*after 'batch_normalization_13'"),
    (lambda f: rename_layer(f, "conv2d_1", "mystery_1"), "mystery_1"),
    (lambda f: add_layer(f, "conv2d_15", "conv2d_16"), "conv2d_16"),
    (lambda f: f["conv2d_4"].create_dataset("conv2d_4/extra:0", data=np.zeros(3)), "conv2d_4"),
    (lambda f: f.create_dataset("stray/kernel:0", data=np.zeros(3)), "stray"),
], ids=["removed", "removed-last", "renamed", "extra", "leftover-weight", "stray-group"])
def test_malformed_layer_is_refused(tmp_path, edit, named):
    with pytest.raises(ModelLoadError, match=f"labelEncoder.hdf5.*{named}"):
        load_label_encoder(edited_label_encoder(tmp_path, edit))


def test_wrong_shape_is_refused(tmp_path):
    def reshape(f):
        del f["conv2d_3/conv2d_3/kernel:0"]
        f["conv2d_3/conv2d_3"].create_dataset("kernel:0", data=np.zeros((3, 3, 16, 16), np.float32))
    with pytest.raises(ModelLoadError, match="layer 'conv2d_3' weight 'conv2d_3/kernel:0' of shape"):
        load_label_encoder(edited_label_encoder(tmp_path, reshape))


def test_cli_bundle_runs_official_decoder(tmp_path, weights_dir, capsys):
    out = tmp_path / "glas512.ldseg"
    export_main(["--from-keras", str(weights_dir), "--config", "glas512", "--out", str(out), "--check-batches", "1",
                 "--bf16-agreement", "0"])
    assert "glas512" in capsys.readouterr().out
    assert load_bundle(out).manifest["preprocessing"]["mode"] == OFFICIAL
    segmenter = Segmenter(out, backend="onnxruntime", device="cpu")
    probs = segmenter.backend.decode(nchw("decoder_in.npy").numpy())
    assert relative_error(nhwc(torch.from_numpy(probs)), np.load(REFERENCE / "decoder_out_f64.npy")) < TOLERANCE
    # sample() prepares images as the official loader did, from the bundle and from its torch model alike
    assert segmenter.preprocessing == Segmenter(out, backend="torch").preprocessing == OFFICIAL
    if DEMO.is_dir():
        image = np.asarray(Image.open(DEMO / "Image" / "Case1.bmp"))
        z_i = segmenter.backend.encode(prepare(image, segmenter.config, mode=segmenter.preprocessing).pixels[None])
        assert relative_error(nhwc(torch.from_numpy(z_i)), np.load(REFERENCE / "image_encoder_out_f64.npy")[:1]) \
            < TOLERANCE
