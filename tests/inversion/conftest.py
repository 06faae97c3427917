"""Shared inversion fixtures: a random ReLU recovery problem (Hand & Voroninski) and a small digits VAE."""

import pytest
import torch

from manifold_defense.generators import VAE, RandomReLUGenerator
from manifold_defense.operators import (
    GaussianMeasurements,
)


@pytest.fixture(scope="session")
def relu_problem():
    G = RandomReLUGenerator((6, 120, 80, 200), seed=1)
    z = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = G(z)
    A = GaussianMeasurements(G.output_shape, 48, seed=0)
    return G, z, x, A, A(x)


@pytest.fixture
def rel():
    """Per-sample relative error ‖a − b‖ / ‖b‖."""
    return _rel


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1))


@pytest.fixture(scope="session")
def small_vae():
    from manifold_defense import data
    from manifold_defense.generators import train_vae

    torch.manual_seed(0)
    vae = VAE((1, 8, 8), 6, [64, 64])
    train_vae(vae, data.load("digits", "train").images, epochs=40, batch_size=64, lr=3e-3, progress=False)
    return vae.eval()
