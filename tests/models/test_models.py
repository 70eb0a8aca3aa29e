"""The LDSeg networks: published sizes, shapes, and behaviour that must not depend on batch."""
import pytest
import torch

from conftest import perturbed
from ldseg_rt.configs import CONFIGS, LDSegConfig, get_config
from ldseg_rt.errors import ConfigError
from ldseg_rt.models import LDSeg, build_model


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters())


# Trainable parameters of the original Keras networks (TF 2.21 count_params() of
# FahimZaman/LDSeg utilities/model.py built at 512x512x3, 2 classes), and of the same Keras
# blocks assembled as `small`.
KERAS_COUNTS = {
    "glas512": {"image_encoder": 294_061, "label_encoder": 185_617, "denoiser": 1_013_873, "decoder": 270_566},
    "small": {"image_encoder": 64_365, "label_encoder": 57_265, "denoiser": 1_013_873, "decoder": 58_745},
}
# BatchNorm moving statistics (Keras' non-trainable weights).
KERAS_NON_TRAINABLE = {"glas512": {"image_encoder": 2, "label_encoder": 1_248, "decoder": 1_156}}


@pytest.mark.parametrize("name", sorted(KERAS_COUNTS))
def test_parameter_counts_match_keras(name):
    model = LDSeg.from_config(get_config(name))
    for part, count in KERAS_COUNTS[name].items():
        assert trainable(getattr(model, part)) == count, part
    for part, count in KERAS_NON_TRAINABLE.get(name, {}).items():
        stats = sum(b.numel() for n, b in getattr(model, part).named_buffers() if n.endswith(("running_mean", "running_var")))
        assert stats == count, part
    assert 0.95e6 < trainable(model.denoiser) < 1.05e6  # the design: "about 1.0M"


@pytest.mark.parametrize("name", sorted(n for n, c in CONFIGS.items() if c.family == "ldseg" and c.spatial_dims == 2))
def test_shapes(name):  # the 3-D networks: tests/models/test_ldseg3d.py
    cfg = get_config(name)
    model = perturbed(LDSeg.from_config(cfg), seed=1).eval()
    s, latent = cfg.image_shape, cfg.latent_shape
    with torch.no_grad():
        z_i = model.image_encoder(torch.rand(2, cfg.in_channels, *s))
        eps = model.denoiser(torch.randn(2, *latent), z_i, torch.tensor([0.0, 999.0]))
        probs = model.decoder(torch.randn(2, *latent))
        z_l = model.label_encoder(torch.randint(0, cfg.num_classes, (2, 1, *s)).float())
    assert z_i.shape == eps.shape == z_l.shape == (2, *latent)
    assert probs.shape == (2, cfg.num_classes, *s)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *s))
    assert torch.isfinite(eps).all()


def test_networks_are_batch_independent(small_model):
    """In eval mode every row is computed alone: what sampling reproducibility stands on."""
    cfg = small_model.config
    gen = torch.Generator().manual_seed(0)
    z, z_i = torch.randn(5, *cfg.latent_shape, generator=gen), torch.randn(5, *cfg.latent_shape, generator=gen)
    t = torch.tensor([999.0, 500.0, 71.4, 3.0, 0.0])
    with torch.no_grad():
        batched = small_model.denoiser(z, z_i, t)
        alone = torch.cat([small_model.denoiser(z[i:i + 1], z_i[i:i + 1], t[i:i + 1]) for i in range(5)])
        dec_b = small_model.decoder(z)
        dec_a = torch.cat([small_model.decoder(z[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dec_b, dec_a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["small", "amb_small"])  # one configuration of each family
def test_from_config_is_seeded_and_leaves_global_rng_alone(name):
    cfg = get_config(name)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (build_model(cfg, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.rand(3), expected)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert a.config is cfg and not a.training


def test_config_round_trip_and_errors():
    cfg = get_config("glas512")
    assert LDSegConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.latent_shape == (1, 32, 32) and get_config("small").latent_shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="unknown configuration"):
        get_config("glas1024")
    with pytest.raises(ConfigError, match="unknown configuration fields"):
        LDSegConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="divisible"):
        LDSegConfig(name="odd", image_size=100, in_channels=1, num_classes=2)
