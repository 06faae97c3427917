"""Loss terms and feasible sets of the engine: ℓ1-ball projection (Duchi et al. 2008), dead-zone loss."""

import pytest
import torch

from manifold_defense.inversion import (
    dead_zone_loss,
    project_l1_ball,
)
from manifold_defense.validation import InputError


def _bisection_l1(v: torch.Tensor, r: float) -> torch.Tensor:
    if float(v.abs().sum()) <= r:
        return v
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((v.abs() - mid).clamp_min(0).sum()) > r else (lo, mid)
    return v.sign() * (v.abs() - hi).clamp_min(0)


def test_project_l1_ball_matches_bisection(rng):
    v = torch.randn(6, 40, generator=rng, dtype=torch.float64)
    r = torch.tensor([0.0, 0.3, 1.0, 5.0, 20.0, 1e3], dtype=torch.float64)
    p = project_l1_ball(v, r)
    for i in range(6):
        torch.testing.assert_close(p[i], _bisection_l1(v[i], float(r[i])), atol=1e-10, rtol=0)
    assert bool((p.abs().sum(1) <= r + 1e-9).all())


def test_dead_zone_loss():
    y = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([0.1, -0.2, 0.25, 0.0, 0.5, -0.6, 0.0, 0.0]).view(2, 1, 2, 2)
    torch.testing.assert_close(dead_zone_loss(0.25)(pred, y), torch.tensor([0.0, (0.25**2 + 0.35**2) / 4]))
    torch.testing.assert_close(dead_zone_loss(0.0)(pred, y), pred.pow(2).flatten(1).mean(1))
    with pytest.raises(InputError, match="dead-zone"):
        dead_zone_loss(-0.1)
