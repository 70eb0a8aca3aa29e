"""Importing the official 3-D LDSeg Keras weights (knee3d): every network reproduces the official TF outputs,
and malformed or foreign files are refused naming the file and the layer. Needs ../shared/data/ldseg-official
(skipped without).

The volumes are large (128x128x256; decoding one is ~1.3 TFLOP): each network runs once, in float32, without
autograd."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ldseg_rt.configs import get_config
from ldseg_rt.errors import ModelLoadError
from ldseg_rt.export.keras_weights import keras_files, load_keras_model, load_network
from ldseg_rt.models import build_model
from ldseg_rt.pipeline.preprocess import OFFICIAL

OFFICIAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ldseg-official"
REFERENCE = OFFICIAL_DATA / "reference"
SAVED = OFFICIAL_DATA / "savedModels"
TOLERANCE = 1e-4  # max |ours - official| / max |official|
CROP = (slice(None), slice(None), slice(32, 96), slice(32, 96), slice(64, 192))  # decoder3d_out_f64_crop, NCDHW
CFG = get_config("knee3d")

if not OFFICIAL_DATA.is_dir():
    pytest.skip(f"official LDSeg weights not found at {OFFICIAL_DATA}", allow_module_level=True)


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    ours = np.moveaxis(ours.detach().double().numpy(), 1, -1)  # NCDHW -> the reference's NDHWC
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def ncdhw(name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.load(REFERENCE / name), -1, 1)))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """The three published 3-D networks and the random-valued 3-D denoiser, laid out as the importer expects."""
    folder = tmp_path_factory.mktemp("keras3d")
    for network, file in keras_files(CFG).items():
        (folder / file).symlink_to(REFERENCE / "denoiser3D_random.hdf5" if network == "denoiser" else SAVED / file)
    return folder


@pytest.fixture(scope="module")
def model(weights_dir):
    return load_keras_model(weights_dir, "knee3d")


def test_files_per_configuration():
    assert keras_files(CFG) == {"image_encoder": "imageEncoder3D.hdf5", "label_encoder": "labelEncoder3D.hdf5",
                                "denoiser": "denoiser3D.hdf5", "decoder": "labelDecoder3D.hdf5"}
    assert keras_files(get_config("glas512"))["decoder"] == "labelDecoder.hdf5"


def test_image_encoder_matches_official(model):
    with torch.no_grad():
        out = model.image_encoder(ncdhw("knee_image.npy"))
    assert relative_error(out, np.load(REFERENCE / "image_encoder3d_out_f64.npy")) < TOLERANCE


def test_label_encoder_matches_official(model):
    label = torch.from_numpy(np.load(REFERENCE / "knee_label.npy")).float()[:, None]
    with torch.no_grad():
        out = model.label_encoder(label)
    assert relative_error(out, np.load(REFERENCE / "label_encoder3d_out_f64.npy")) < TOLERANCE


def test_decoder_matches_official(model):
    with torch.no_grad():
        out = model.decoder(ncdhw("label_encoder3d_out.npy"))
    assert out.shape == (1, 3, *CFG.image_shape)
    assert relative_error(out[CROP], np.load(REFERENCE / "decoder3d_out_f64_crop.npy")) < TOLERANCE


def test_denoiser_matches_official(model):
    t = torch.from_numpy(np.load(REFERENCE / "denoiser3d_in_t.npy"))
    with torch.no_grad():
        out = model.denoiser(ncdhw("denoiser3d_in_zt.npy"), ncdhw("image_encoder3d_out.npy"), t)
    assert relative_error(out, np.load(REFERENCE / "denoiser3d_out.npy")) < TOLERANCE


def keras_weight(file: Path, layer: str, weight: str) -> np.ndarray:
    with h5py.File(file, "r") as f:
        return np.asarray(f[f"{layer}/{weight}"])


def test_weights_land_where_keras_has_them(model, weights_dir):
    """The layouts, read off single tensors: a grouped Conv3D kernel (kd, kh, kw, in/groups, out), the
    per-element LayerNorm (8, 8, 16, 1), an attention block's dense kernel, BatchNorm moving statistics."""
    kernel = keras_weight(SAVED / "imageEncoder3D.hdf5", "conv3d_22", "conv3d_22/kernel:0")
    assert kernel.shape == (3, 3, 3, 4, 32)
    conv1 = model.image_encoder.blocks[0].conv1.weight.detach().numpy()
    np.testing.assert_array_equal(conv1, kernel.transpose(4, 3, 0, 1, 2))
    gamma = keras_weight(SAVED / "labelEncoder3D.hdf5", "encoder_output", "encoder_output/gamma:0")
    np.testing.assert_array_equal(model.label_encoder.norm.weight[0].detach().numpy(), gamma[..., 0])
    query = keras_weight(weights_dir / "denoiser3D.hdf5", "attention_block_4", "attention_block_4/dense_25/kernel:0")
    np.testing.assert_array_equal(model.denoiser.middle[0].attention.query.weight.detach().numpy(), query.T)
    variance = keras_weight(SAVED / "imageEncoder3D.hdf5", "embedding_output", "embedding_output/moving_variance:0")
    np.testing.assert_array_equal(model.image_encoder.norm.running_var.numpy(), variance)
    assert model.preprocessing == OFFICIAL


def test_missing_file_is_refused(tmp_path, weights_dir):
    for file in ("imageEncoder3D.hdf5", "labelDecoder3D.hdf5"):
        (tmp_path / file).symlink_to(weights_dir / file)
    with pytest.raises(ModelLoadError, match="denoiser3D.hdf5"):
        load_keras_model(tmp_path, "knee3d")


def test_label_encoder_file_is_optional(tmp_path, weights_dir):
    for file in ("imageEncoder3D.hdf5", "labelDecoder3D.hdf5", "denoiser3D.hdf5"):
        (tmp_path / file).symlink_to(weights_dir / file)
    model = load_keras_model(tmp_path, "knee3d")
    assert model.preprocessing == OFFICIAL and model.label_encoder.norm.weight.shape == (1, 8, 8, 16)


def test_2d_files_are_refused_for_knee3d(tmp_path, weights_dir):
    """The 2-D decoder under the 3-D name: its transposed convs and 4-D kernels fit no 3-D network."""
    for file in ("imageEncoder3D.hdf5", "denoiser3D.hdf5"):
        (tmp_path / file).symlink_to(weights_dir / file)
    (tmp_path / "labelDecoder3D.hdf5").symlink_to(SAVED / "labelDecoder.hdf5")
    with pytest.raises(ModelLoadError, match=r"labelDecoder3D.hdf5: layer 'conv2d_transpose' holds a 2-D kernel "
                                             r"\(3, 3, 32, 1\); the knee3d decoder is a 3-D network"):
        load_keras_model(tmp_path, "knee3d")


def test_3d_file_is_refused_for_a_2d_network():
    cfg = get_config("glas512")
    with pytest.raises(ModelLoadError, match=r"imageEncoder3D.hdf5: layer 'conv3d_20' holds a 3-D kernel "
                                             r"\(3, 3, 3, 1, 16\); the glas512 image_encoder is a 2-D network"):
        load_network(build_model(cfg).image_encoder, SAVED / "imageEncoder3D.hdf5", "image_encoder", cfg)


def edited_copy(tmp_path: Path, file: str, edit) -> Path:
    """A copy of the official savedModels/`file`, changed by edit(file) before it is closed."""
    out = tmp_path / file
    with h5py.File(SAVED / file, "r") as src, h5py.File(out, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        dst.attrs.update(src.attrs)
        edit(dst)
    return out


def replace_weight(f, layer: str, weight: str, shape: tuple) -> None:
    del f[f"{layer}/{layer}/{weight}"]
    f[f"{layer}/{layer}"].create_dataset(weight, data=np.zeros(shape, np.float32))


def drop_layer(f, name: str) -> None:
    del f[name]
    names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    f.attrs["layer_names"] = np.array([n.encode() for n in names if n != name])  # fixed-length bytes, as Keras


def test_edited_copy_still_loads(tmp_path):
    path = edited_copy(tmp_path, "imageEncoder3D.hdf5", lambda f: None)  # the refusals below are the edits'
    load_network(build_model(CFG).image_encoder, path, "image_encoder", CFG)


@pytest.mark.parametrize("file, network, edit, named", [
    # An ungrouped kernel where the official conv is grouped (4 groups).
    ("imageEncoder3D.hdf5", "image_encoder", lambda f: replace_weight(f, "conv3d_22", "kernel:0", (3, 3, 3, 16, 32)),
     r"layer 'conv3d_22' weight 'conv3d_22/kernel:0' of shape \(3, 3, 3, 16, 32\) does not fit "
     r"image_encoder.blocks.0.conv1.weight of shape \(32, 4, 3, 3, 3\)"),
    # The per-element LayerNorm of a latent with D and W swapped.
    ("labelEncoder3D.hdf5", "label_encoder", lambda f: replace_weight(f, "encoder_output", "gamma:0", (16, 8, 8, 1)),
     r"layer 'encoder_output' weight 'encoder_output/gamma:0' of shape \(16, 8, 8, 1\) does not fit "
     r"label_encoder.norm.weight"),
    ("labelEncoder3D.hdf5", "label_encoder", lambda f: drop_layer(f, "conv3d_3"), "conv3d_3"),
    ("labelDecoder3D.hdf5", "decoder", lambda f: drop_layer(f, "batch_normalization_27"),
     "decoder.norm gets no layer.*after 'batch_normalization_26'"),
], ids=["grouped-kernel", "layer-norm", "removed-downsample", "removed-last-bn"])
def test_malformed_file_is_refused(tmp_path, file, network, edit, named):
    path = edited_copy(tmp_path, file, edit)
    with pytest.raises(ModelLoadError, match=f"{file}.*{named}"):
        load_network(getattr(build_model(CFG), network), path, network, CFG)
