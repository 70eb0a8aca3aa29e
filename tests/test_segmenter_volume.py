"""Segmenter with a 3-D model (small3d): a volume (X, Y, Z) in, results on its grid and in its
axis order; the 3-D latents of the C++ loop against the float64 oracle; onnxruntime against torch;
the geometry end to end with a decoder that segments what it is shown; the segment CLI on NIfTI."""
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import perturbed
from ldseg_rt import Segmenter
from ldseg_rt.cli import main as cli_main
from ldseg_rt.configs import get_config
from ldseg_rt.data.phantom_volumes import make_phantom_volume
from ldseg_rt.diffusion.oracle import reference_sample
from ldseg_rt.diffusion.tables import ldseg_table
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.export import export_bundle
from ldseg_rt.io.volume import Volume
from ldseg_rt.models import LDSeg
from ldseg_rt.pipeline.preprocess import prepare

CFG = get_config("small3d")


@pytest.fixture(scope="module")
def model():
    return perturbed(LDSeg.from_config(CFG, seed=2), seed=3).eval()


@pytest.fixture(scope="module")
def seg(model):
    return Segmenter(model, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    return export_bundle(model, tmp_path_factory.mktemp("bundles") / "small3d.ldseg", check_batches=(1, 3),
                         progress=False)


def test_latents_match_the_float64_oracle_and_results_the_decoder(seg, model, rng):
    volume = make_phantom_volume((45, 37, 29), int(rng.integers(1000)))[0]
    seed, n, steps, eta = int(rng.integers(2 ** 63)), 3, 5, 0.5
    res = seg.sample(volume, n=n, steps=steps, seed=seed, eta=eta)
    assert res.latents.shape == (n, *CFG.latent_shape)
    with torch.no_grad():
        cond = model.image_encoder(torch.from_numpy(prepare(volume, CFG).pixels[None])).repeat(n, 1, 1, 1, 1)

        def denoise(z, t):
            return model.denoiser(torch.from_numpy(z), cond, torch.from_numpy(t)).numpy()

        want = reference_sample(denoise, [seed], n, CFG.latent_shape, ldseg_table(steps, eta))
        assert np.abs(res.latents - want).max() <= 1e-5 * np.abs(want).max()
        probs = model.decoder(torch.from_numpy(res.latents))  # (n, C, Z', Y', X')
        resized = torch.nn.functional.interpolate(probs, size=volume.shape[::-1], mode="trilinear")
    mean = resized.mean(0).permute(0, 3, 2, 1).numpy()  # back to (C, X, Y, Z)
    np.testing.assert_allclose(res.probs, mean, atol=1e-5)
    assert res.samples.shape == (n, *volume.shape) and res.mask.shape == res.uncertainty.shape == volume.shape
    assert np.array_equal(res.mask, res.probs.argmax(0))


def test_geometry_is_kept_end_to_end(seg, monkeypatch):
    """With a decoder that segments the bright voxels of the volume the encoder was shown, the
    consensus lies on a bright box off the centre as the caller holds it: any flip or axis swap
    on the way in or out would move it off the box."""
    rng = np.random.default_rng(7)
    volume = rng.normal(0.0, 0.05, (52, 30, 41))  # three different sides: a swap cannot hide
    label = np.zeros(volume.shape, bool)
    label[5:20, 3:12, 25:38] = True
    volume[label] += 1.0
    shown = {}
    encode, backend = seg.backend.encode, seg.backend

    def recording_encode(pixels):
        shown["pixels"] = torch.from_numpy(pixels)
        return encode(pixels)

    def bright_decoder(z):
        bright = (shown["pixels"][:, :1] > 0.5).float()
        return torch.cat([1 - bright, bright, torch.zeros_like(bright)], 1).repeat(len(z), 1, 1, 1, 1).numpy()

    monkeypatch.setattr(backend, "encode", recording_encode)
    monkeypatch.setattr(backend, "decode", bright_decoder)
    mask = seg.sample(volume, n=2, seed=0).mask
    dice = 2 * (mask.astype(bool) & label).sum() / (mask.astype(bool).sum() + label.sum())
    assert dice > 0.9, dice


def test_onnxruntime_samples_as_torch(seg, bundle, rng):
    volume = make_phantom_volume((33, 40, 27), int(rng.integers(1000)))[0]
    seed = int(rng.integers(2 ** 63))
    ort = Segmenter(bundle.path, backend="onnxruntime").sample(volume, n=3, seed=seed)
    ref = seg.sample(volume, n=3, seed=seed)
    assert np.abs(ort.latents - ref.latents).max() <= 1e-4
    np.testing.assert_allclose(ort.probs, ref.probs, atol=1e-4)
    assert bundle.manifest["preprocessing"]["size"] == list(CFG.image_shape)


def test_segment_volume_runs_a_3d_model_whole(seg, rng):
    array = make_phantom_volume((30, 26, 22), 3)[0]
    affine = np.diag([0.8, 1.1, 2.5, 1.0])
    result = seg.segment_volume(Volume(array, affine), n=2, seed=9, progress=False)
    direct = seg.sample(array, n=2, seed=9, return_samples=False)
    assert result.axis is None and result.volume.affine is not None
    assert np.array_equal(result.mask, direct.mask) and np.array_equal(result.probs, direct.probs)
    with pytest.raises(InvalidArgumentError, match="3-D: it segments the whole volume"):
        seg.segment_volume(array, n=1, axis=2)
    with pytest.raises(InvalidArgumentError, match=r"30x26x22 volume with n=1000000 needs about"):
        seg.sample(array, n=1_000_000)


def test_segment_cli_writes_a_3d_result_on_the_input_grid(bundle, tmp_path):
    array, _ = make_phantom_volume((28, 24, 20), 5)
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [-0.9, 0.0, 0.0, 5.0], [0.0, 1.2, 0.0, -3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image((array * 1000).astype(np.int16), affine), tmp_path / "case.nii.gz")
    cli_main(["segment", str(tmp_path / "case.nii.gz"), "-m", str(bundle.path), "-n", "2", "--seed", "4",
              "-o", str(tmp_path / "out")])
    mask = nib.load(tmp_path / "out" / "case" / "mask.nii.gz")
    assert mask.shape == array.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    direct = Segmenter(bundle.path).sample((array * 1000).astype(np.int16), n=2, seed=4)
    assert np.array_equal(np.asarray(mask.dataobj), direct.mask)
