"""ldseg_rt.diffusion.sampler (the C++ loop) against ldseg_rt.diffusion.oracle.reference_sample (the
float64 oracle) on the library's own step tables."""
import numpy as np
import pytest

from ldseg_rt import diffusion as D
from ldseg_rt.diffusion.sampler import sample_latents


def mixing_denoiser(z, t):
    """Analytic, and mixes elements across each latent so a layout bug would show."""
    rolled = np.roll(z, 1, axis=-1)
    return (np.tanh(0.6 * z + 0.3 * rolled) * (1 - t[:, None, None, None] / 1500)).astype(np.float32)


TABLES = {
    "ldseg-ddim": lambda: D.ldseg_table(15, 0.0),
    "ldseg-eta0.3": lambda: D.ldseg_table(9, 0.3),
    "ddpm-small": lambda: D.ddpm_table(np.linspace(990, 10, 10), D.cosine_alpha_bar(np.linspace(990, 10, 10))),
    "ddpm-large": lambda: D.ddpm_table(np.linspace(990, 10, 10), D.cosine_alpha_bar(np.linspace(990, 10, 10)), "large"),
}


@pytest.mark.parametrize("table_name", sorted(TABLES))
@pytest.mark.parametrize("prediction,clip,renorm", [("eps", 0.0, True), ("x", 1.0, False), ("v", 0.0, False),
                                                    ("eps", 2.0, False)])
@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 5, 3)])
def test_cpp_loop_matches_oracle(rng, table_name, prediction, clip, renorm, shape):
    table = TABLES[table_name]()
    if prediction != "eps":  # x and v cannot recover eps at s_t = 0; drop LDSeg's t = 0 step
        table = table[table[:, 2] > 0]
    seeds = [int(s) for s in rng.integers(2 ** 63, size=2)]
    got = sample_latents(mixing_denoiser, seeds, 3, shape, table, prediction, clip, renorm)
    want = D.reference_sample(mixing_denoiser, seeds, 3, shape, table, prediction, clip, renorm)
    assert got.dtype == np.float32 and got.shape == (6, *shape)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_wrapper_rejects_bad_tables():
    with pytest.raises(ValueError, match="prediction"):
        sample_latents(mixing_denoiser, [0], 1, (1, 2, 2), D.ldseg_table(3), "score")
    with pytest.raises(ValueError, match=r"shape \(steps, 7\)"):
        sample_latents(mixing_denoiser, [0], 1, (1, 2, 2), np.zeros((3, 6)))


def test_a_draw_in_chunks_is_the_draw_in_one_call(rng):
    """Samples first_sample .. first_sample + n - 1: chunks of one draw equal the whole draw (the
    denoiser is per-row, so exactly), and the oracle keyed by the same sample indices."""
    table, shape = D.ldseg_table(7, 0.4), (2, 5, 3)
    seeds = [int(s) for s in rng.integers(2 ** 63, size=2)]
    whole = sample_latents(mixing_denoiser, seeds, 7, shape, table).reshape(2, 7, *shape)
    for first, n in [(0, 3), (3, 1), (4, 3)]:
        chunk = sample_latents(mixing_denoiser, seeds, n, shape, table, first_sample=first).reshape(2, n, *shape)
        np.testing.assert_array_equal(chunk, whole[:, first:first + n])
    want = D.reference_sample(mixing_denoiser, seeds, 3, shape, table, first_sample=4).reshape(2, 3, *shape)
    assert np.abs(whole[:, 4:] - want).max() <= 1e-5 * np.abs(want).max()


def test_sample_indices_must_fit_the_noise_counter():
    with pytest.raises(ValueError, match="first_sample must be >= 0"):
        sample_latents(mixing_denoiser, [0], 1, (1, 2, 2), D.ldseg_table(3), first_sample=-1)
    with pytest.raises(ValueError, match="below 2\\^32"):
        sample_latents(mixing_denoiser, [0], 2, (1, 2, 2), D.ldseg_table(3), first_sample=2 ** 32 - 1)
