"""Implicit derivative of the projection: the per-sample Jacobians it solves with."""

import torch

from manifold_defense.implicit import projection_jacobian


def test_projection_jacobian_matches_autograd(digits_vae):
    z = digits_vae.sample_latent(5, torch.Generator().manual_seed(0))
    reference = torch.stack([torch.autograd.functional.jacobian(lambda zi: digits_vae(zi[None]).flatten(), zi)
                             for zi in z])
    J = projection_jacobian(digits_vae, z)
    assert J.shape == (5, 64, digits_vae.latent_dim)
    torch.testing.assert_close(J, reference, rtol=1e-4, atol=1e-5)
