"""The pixel-space family end to end: Segmenter, the shared sampler, export, onnxruntime,
the device path and training."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import perturbed
from ldseg_rt import Segmenter
from ldseg_rt.bundle import load_bundle
from ldseg_rt.configs import get_config
from ldseg_rt.data.ambiguous_lesions import make_ambiguous_case
from ldseg_rt.diffusion.oracle import reference_sample
from ldseg_rt.diffusion.pixel_schedule import pixel_table
from ldseg_rt.export import export_bundle
from ldseg_rt.kernels.attention import attention as kernel_attention
from ldseg_rt.models import AmbiguousModel
from ldseg_rt.models.checkpoint import load_model, save_checkpoint
from ldseg_rt.pipeline.preprocess import prepare
from ldseg_rt.training.dataset import build_dataset
from ldseg_rt.training.trainer import Trainer, TrainSettings


def _model(prediction: str, **config) -> AmbiguousModel:
    cfg = dataclasses.replace(get_config("amb_small"), prediction=prediction, **config)
    model = AmbiguousModel.from_config(cfg, seed=2)
    perturbed(model.denoiser, seed=5, scale=0.5)  # zero-initialised heads would output 0
    return model.eval()


@pytest.fixture(scope="module", params=["x", "eps"])
def amb_model(request):
    return _model(request.param)


def test_samples_follow_the_float64_oracle(amb_model, rng):
    """n=6 on a CPU: the U-Net takes the rows 4 at a time (faster per sample than all at once),
    and the samples are still the oracle's."""
    cfg = amb_model.config
    case = make_ambiguous_case(cfg.image_size, int(rng.integers(10 ** 6)))
    seed, n = int(rng.integers(2 ** 63)), 6
    segmenter, batches = Segmenter(amb_model, backend="torch", device="cpu"), []
    run = segmenter.backend.run

    def recorded(network, *arrays):
        if network == "denoiser":
            batches.append(len(arrays[0]))
        return run(network, *arrays)

    segmenter.backend.run = recorded
    result = segmenter.sample(case.image, n=n, seed=seed)
    assert batches == [4, 2] * cfg.steps
    condition = torch.from_numpy(np.repeat(prepare(case.image, cfg).pixels[None], n, axis=0))

    def denoise(z, t):
        with torch.inference_mode():
            return amb_model.denoiser(torch.from_numpy(z), condition, torch.from_numpy(t)).numpy()

    expected = reference_sample(denoise, [seed], n, cfg.latent_shape, pixel_table(cfg), cfg.prediction,
                                clip=cfg.clip, renorm=False)
    assert np.abs(result.latents - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert np.array_equal(result.samples, (result.latents[:, 0] > 0).astype(np.uint8))
    assert set(np.unique(result.samples)) <= {0, 1} and result.probs.shape == (2, *case.image.shape)
    np.testing.assert_allclose(result.probs[1], result.samples.mean(axis=0), atol=1e-6)


def test_export_and_onnxruntime_give_the_same_samples(amb_model, tmp_path, rng):
    bundle = export_bundle(amb_model, tmp_path / "amb.ldseg", check_batches=(1, 5), progress=False)
    assert load_bundle(bundle.path).manifest["family"] == "ambiguous"
    assert load_model(bundle.path).config == amb_model.config
    image = make_ambiguous_case(amb_model.config.image_size, int(rng.integers(10 ** 6))).image
    seed = int(rng.integers(2 ** 63))
    ort = Segmenter(bundle.path, device="cpu").sample(image, n=8, seed=seed)
    ref = Segmenter(bundle.path, backend="torch", device="cpu").sample(image, n=8, seed=seed)
    print(f"latent max abs difference {np.abs(ort.latents - ref.latents).max():.2e}")
    assert (ort.samples == ref.samples).mean() >= 0.999


def test_device_path_matches_the_cpu_path(rng):
    # One parameterisation and 4 groups a norm: the interpreter's cost is per program. 2 steps: a
    # noisy one and the last (the step kernel's other branches are tests/kernels').
    amb_model = _model("x", norm_groups=4)
    image = make_ambiguous_case(amb_model.config.image_size, int(rng.integers(10 ** 6))).image
    seed = int(rng.integers(2 ** 63))
    cpu = Segmenter(amb_model, backend="torch", device="cpu").sample(image, n=2, steps=2, seed=seed)
    segmenter = Segmenter(amb_model, backend="torch", device="cpu", kernels=True)
    attention = [m for m in segmenter.backend.model.modules() if hasattr(m, "attend")]
    assert attention and all(m.attend is kernel_attention for m in attention)  # the Triton kernel runs here
    device = segmenter.sample(image, n=2, steps=2, seed=seed)
    assert np.abs(device.latents - cpu.latents).max() <= 1e-4


def test_training_resumes_exactly(tmp_path):
    cfg = get_config("amb_small")
    settings = TrainSettings(steps=2, batch_size=2, lr=1e-3, clip_grad=1.0, checkpoint_every=1)
    data = build_dataset(cfg, "synthetic")
    straight = Trainer(cfg, settings, "cpu")
    straight.fit(data, tmp_path / "straight.pt", progress=False)
    first = Trainer(cfg, TrainSettings(**{**settings.__dict__, "steps": 1}), "cpu")
    first.fit(data, tmp_path / "half.pt", progress=False)
    resumed = Trainer.resume(tmp_path / "half.pt", settings, "cpu")
    resumed.fit(data, tmp_path / "resumed.pt", progress=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert load_model(tmp_path / "resumed.pt").config == cfg


def test_family_specific_data_errors():
    from ldseg_rt.errors import DatasetError
    with pytest.raises(DatasetError, match="trains on --data synthetic"):
        build_dataset(get_config("amb_small"), "some/folder", "labels")


def test_evaluation_scores_each_case_against_its_annotations(amb_model, tmp_path, capsys):
    from ldseg_rt.cli import main
    from ldseg_rt.data.ambiguous_lesions import AmbiguousDataset
    from ldseg_rt.evaluation.distribution import score_samples
    from ldseg_rt.evaluation.metrics import ged, hm_iou
    cases = AmbiguousDataset.evaluation(amb_model.config.image_size, count=3, annotators=4)
    oracle = score_samples(lambda case, k: case.sample(5, k), cases, progress=False)
    for k in range(3):
        case = cases.case(k)
        annotations = case.annotations(4, case.seed)
        assert oracle.ged[k] == pytest.approx(ged(case.sample(5, k), annotations))
        assert oracle.hm_iou[k] == pytest.approx(hm_iou(case.sample(5, k), annotations))
    main(["evaluate", str(save_checkpoint(amb_model, tmp_path / "amb.pt")), "--images", "2", "-n", "3"])
    printed = capsys.readouterr().out
    assert "2 held-out ambiguous cases, N=3 samples vs M=4 annotations" in printed and "GED" in printed
