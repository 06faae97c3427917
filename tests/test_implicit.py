"""Implicit derivative of the projection: the per-sample Jacobians and Hessians it solves with, in groups."""

import pytest
import torch

from manifold_defense import implicit
from manifold_defense.implicit import projection_jacobian


def test_projection_jacobian_matches_autograd(digits_vae):
    z = digits_vae.sample_latent(5, torch.Generator().manual_seed(0))
    reference = torch.stack([torch.autograd.functional.jacobian(lambda zi: digits_vae(zi[None]).flatten(), zi)
                             for zi in z])
    J = projection_jacobian(digits_vae, z)
    assert J.shape == (5, 64, digits_vae.latent_dim)
    torch.testing.assert_close(J, reference, rtol=1e-4, atol=1e-5)


def test_backward_in_groups_matches_one_group(digits_vae, monkeypatch):
    """The backward bounds its memory by taking the samples in groups: groups of 2 (and an odd last one) must
    give the same gradient, sample for sample, as all 7 samples at once."""
    z = digits_vae.sample_latent(7, torch.Generator().manual_seed(1))
    with torch.no_grad():
        x_proj = digits_vae(z)
    x = (x_proj + 0.1 * torch.randn(x_proj.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))

    def grad(max_tangents: int, **kwargs) -> torch.Tensor:
        monkeypatch.setattr(implicit, "_MAX_TANGENTS", max_tangents)
        xx = x.clone().requires_grad_()
        (implicit.implicit_projection(xx, x_proj, z, digits_vae, prior_weight=0.01, **kwargs) * u).sum().backward()
        return xx.grad

    k = digits_vae.latent_dim
    for kwargs in ({}, {"curvature": False}, {"dead_zone": 0.05}):
        whole, grouped = grad(7 * k, **kwargs), grad(2 * k, **kwargs)
        assert whole.abs().sum() > 0
        torch.testing.assert_close(grouped, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dead_zone", [0.0, 0.05])
def test_jacobian_and_hessian_match_autograd(digits_vae, dead_zone):
    """One set of forward-mode passes gives both J and the objective's Hessian: each must equal autograd's."""
    z = digits_vae.sample_latent(3, torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = (digits_vae(z) + 0.2 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    prior = 0.01

    def objective(zi, xi):
        r = (digits_vae(zi[None]) - xi[None]).flatten()
        data = torch.relu(r.abs() - dead_zone).pow(2) if dead_zone > 0 else r.pow(2)
        return data.mean() + prior * zi.pow(2).sum()

    J, H = implicit._jacobian_and_hessian(digits_vae, z, x, dead_zone, prior)
    H_ref = torch.stack([torch.autograd.functional.hessian(lambda zi: objective(zi, xi), zi) for zi, xi in zip(z, x)])
    torch.testing.assert_close(J, projection_jacobian(digits_vae, z), rtol=0, atol=0)
    torch.testing.assert_close(H, H_ref, rtol=1e-4, atol=1e-6)
    assert H_ref.abs().max() > 1e-3
