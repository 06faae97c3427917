"""Implicit derivative of the projection: the per-sample Jacobians and Hessians it solves with."""

import pytest
import torch

import manifold_defense.implicit as implicit


@pytest.fixture
def latents(digits_vae):
    return digits_vae.sample_latent(5, torch.Generator().manual_seed(0))


def _autograd_jacobian(generator, z):
    return torch.stack([torch.autograd.functional.jacobian(lambda zi: generator(zi[None]).flatten(), zi) for zi in z])


class TestChunking:
    @pytest.mark.parametrize("max_tangents", [1, 7, 10_000])
    def test_jacobian_is_exact_whatever_the_chunk(self, digits_vae, latents, monkeypatch, max_tangents):
        # chunking bounds memory (a 128-d GAN latent on 100 samples at once was killed for 22 GB); it must not
        # change the maths
        monkeypatch.setattr(implicit, "_MAX_TANGENTS", max_tangents)
        J = implicit.projection_jacobian(digits_vae, latents)
        torch.testing.assert_close(J, _autograd_jacobian(digits_vae, latents), rtol=1e-4, atol=1e-5)

    def test_hessian_is_the_same_whatever_the_chunk(self, digits_vae, latents, monkeypatch):
        x = digits_vae(latents).detach().clamp(0, 1) + 0.05
        full = implicit._objective_hessian(digits_vae, latents, x, 0.0, 0.01)
        monkeypatch.setattr(implicit, "_MAX_TANGENTS", 1)
        torch.testing.assert_close(implicit._objective_hessian(digits_vae, latents, x, 0.0, 0.01), full,
                                   rtol=1e-4, atol=1e-6)
        assert implicit._chunk(latents) == 1
