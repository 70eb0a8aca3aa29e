"""Shared test helpers."""
import numpy as np
import pytest
import torch

from ldseg_rt.configs import get_config
from ldseg_rt.models import LDSeg


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Keras' zero initialisers leave attention projections and second convs at 0; a test
    that compares implementations must exercise them, so every parameter gets noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen) / max(1.0, p[0].numel() ** 0.5))
    return model


@pytest.fixture(scope="session")
def small_model() -> LDSeg:
    return perturbed(LDSeg.from_config(get_config("small"), seed=3), seed=4).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs every run; the seed is printed, so a failure can be replayed."""
    seed = np.random.SeedSequence().entropy
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
