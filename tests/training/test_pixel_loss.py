"""ldseg_rt.training.pixel_loss: the pixel-space family's loss weights, loss and training
times, against closed forms written out here independently."""
import numpy as np
import pytest
import torch

from conftest import ref_gamma_b
from ldseg_rt.configs import AmbiguousConfig
from ldseg_rt.diffusion import pixel_schedule as P
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.training import pixel_loss as L


def test_loss_weights_vs_hand_formulas(rng):
    lam = rng.uniform(-20, 20, 100)
    snr = np.exp(lam)
    k = rng.uniform(-3, 3)
    want = {"snr": snr, "snr_plus1": snr + 1, "max_snr_1": np.maximum(snr, 1), "uniform": np.ones_like(lam),
            "sigmoid": 1 / (1 + np.exp(-(lam - k)))}
    for kind, w in want.items():
        np.testing.assert_allclose(L.loss_weight(lam, kind, k=k), w, rtol=1e-12)
        got = L.loss_weight(torch.from_numpy(lam), kind, k=k)
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-12)
    # The original's spellings: SNR, SNR_plus1, SNR_trunc, sigmoid (k = 0), sigmoid_K.
    np.testing.assert_allclose(L.loss_weight(lam, "SNR_trunc"), want["max_snr_1"], rtol=1e-12)
    np.testing.assert_allclose(L.loss_weight(lam, "sigmoid"), 1 / (1 + np.exp(-lam)), rtol=1e-12)
    np.testing.assert_allclose(L.loss_weight(lam, "sigmoid_2.5"), 1 / (1 + np.exp(-(lam - 2.5))), rtol=1e-12)


def ref_loss(out, x0, eps, t, b, clamp, prediction, kind):
    """float64 numpy, the original's way: x_t, model output -> x_hat, weighted x-space MSE."""
    gb, lam = ref_gamma_b(t, b, clamp)
    a, s = np.sqrt(gb)[:, None, None, None], np.sqrt(1 - gb)[:, None, None, None]
    x_t = a * x0 + s * eps
    x_hat = {"x": out, "eps": (x_t - s * out) / a, "v": a * x_t - s * out}[prediction]
    snr = gb / (1 - gb)
    w = {"snr": snr, "snr_plus1": snr + 1, "max_snr_1": np.maximum(snr, 1), "uniform": np.ones_like(snr),
         "sigmoid": 1 / (1 + np.exp(-lam))}[kind]
    per = w * ((x_hat - x0) ** 2).mean(axis=(1, 2, 3))
    return per, x_t


@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
@pytest.mark.parametrize("kind", ["snr", "snr_plus1", "max_snr_1", "uniform", "sigmoid"])
def test_pixel_loss_vs_float64(rng, prediction, kind):
    bsz, b, clamp = 12, 0.1, 20.0
    x0 = np.where(rng.uniform(size=(bsz, 1, 8, 8)) < 0.4, 1.0, -1.0)
    eps = rng.standard_normal(x0.shape)
    t = rng.uniform(0.0, 1.0, bsz)
    t[:2] = [0.0, 1.0]  # the clamped ends
    out = rng.standard_normal(x0.shape)
    want, want_xt = ref_loss(out, x0, eps, t, b, clamp, prediction, kind)
    params = {"input_scale": b, "logsnr_clamp": clamp, "prediction": prediction, "loss_weighting": kind}
    T = lambda a: torch.from_numpy(a)  # noqa: E731
    got = L.pixel_loss(T(out), T(x0), T(eps), T(t), params, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7)
    assert L.pixel_loss(T(out), T(x0), T(eps), T(t), params).item() == pytest.approx(want.mean(), rel=1e-7)
    x_t, target = L.training_target(T(x0), T(eps), T(t), b, prediction, clamp)
    np.testing.assert_allclose(x_t.numpy(), want_xt, rtol=1e-10, atol=1e-10)
    # A perfect output has zero loss, and float32 inputs give the float64 value to float32 accuracy.
    assert L.pixel_loss(target, T(x0), T(eps), T(t), params).item() == pytest.approx(0.0, abs=1e-12)
    got32 = L.pixel_loss(T(out).float(), T(x0).float(), T(eps).float(), T(t).float(), params, reduction="none")
    want32, _ = ref_loss(out, x0, eps, t.astype(np.float32).astype(np.float64), b, clamp, prediction, kind)
    np.testing.assert_allclose(got32.numpy(), want32, rtol=2e-5)


def test_pixel_loss_reads_an_ambiguous_config(rng):
    cfg = AmbiguousConfig(name="t", image_size=16, channel_mults=(1, 2), num_res_blocks=(1, 1), prediction="v",
                          loss_weighting="max_snr_1", input_scale=0.3)
    p = P.PixelProcess.of(cfg)
    assert (p.prediction, p.input_scale, p.sampler, p.variance, p.steps) == \
           ("v", 0.3, cfg.sampler, cfg.variance, cfg.steps)
    same = {"prediction": "v", "input_scale": 0.3, "loss_weighting": "max_snr_1"}
    x0 = torch.from_numpy(np.where(rng.uniform(size=(4, 1, 4, 4)) < 0.5, 1.0, -1.0))
    eps, out, t = torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.rand(4)
    assert L.pixel_loss(out, x0, eps, t, cfg).item() == pytest.approx(L.pixel_loss(out, x0, eps, t, same).item())
    np.testing.assert_array_equal(P.pixel_table(cfg), P.pixel_ddpm_table(10, 0.3, 20.0, "large"))


def test_sample_t_is_stratified():
    gen = torch.Generator().manual_seed(0)
    t = L.sample_t(64, gen)
    assert t.shape == (64,) and t.dtype == torch.float32
    assert torch.all((t >= 0) & (t < 1))
    np.testing.assert_array_equal(np.sort(np.floor(t.numpy() * 64)), np.arange(64))  # one per stratum
    u = L.sample_t(64, gen, stratified=False)
    assert torch.all((u >= 0) & (u < 1))


def test_unknown_weighting_is_refused():
    with pytest.raises(InvalidArgumentError, match="weighting"):
        L.loss_weight(0.0, "snr_squared")
