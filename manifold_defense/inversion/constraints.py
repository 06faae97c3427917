"""Feasible sets for projected descent: ℓ1 balls (ILO), ℓ∞ / ℓ2 balls and the image box (attacks)."""

from __future__ import annotations

from typing import Callable

import torch

from manifold_defense.validation import InputError

__all__ = ["project_l1_ball", "project_lp_ball", "ball_projection", "NORMS"]

NORMS = ("linf", "l2")


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the ℓ1 ball of (per-row) ``radius``.

    Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient projections onto the ℓ1-ball", ICML 2008:
    sort |v|, find the threshold θ from cumulative sums, soft-threshold. Batched, O(d log d) per row.
    """
    flat = v.flatten(1)
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(flat.shape[0]).clamp_min(0)
    a = flat.abs()
    inside = a.sum(1) <= r
    mu = a.sort(dim=1, descending=True).values
    cums = mu.cumsum(1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = mu - (cums - r[:, None]) / ks > 0
    rho = cond.to(flat.dtype).mul(ks).argmax(1)  # last index where cond holds
    theta = ((cums.gather(1, rho[:, None]).squeeze(1) - r) / (rho + 1).to(flat.dtype)).clamp_min(0)
    out = flat.sign() * (a - theta[:, None]).clamp_min(0)
    out = torch.where(inside[:, None], flat, out)
    return out.view_as(v)


def project_lp_ball(delta: torch.Tensor, epsilon: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project each row of ``delta`` onto the ℓ∞ or ℓ2 ball of radius ``epsilon`` (a number or one per row)."""
    eps = torch.as_tensor(epsilon, dtype=delta.dtype, device=delta.device)
    if eps.dim() == 1:
        eps = eps.view(-1, *([1] * (delta.dim() - 1)))
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    if norm == "l2":
        n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        return delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)
    raise InputError(f"norm must be one of {NORMS}, got {norm!r}")


def ball_projection(center: torch.Tensor, epsilon: float, norm: str,
                    box: tuple[float, float] | None = (0.0, 1.0)) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``project(v, rows)`` onto ``{v : ‖v − center[rows]‖ ≤ ε} ∩ box`` (clamping after the ball projection
    stays in the ball when the centre lies in the box, as images do)."""
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")

    def project(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        c = center[rows]
        out = c + project_lp_ball(v - c, epsilon, norm)
        return out.clamp(*box) if box is not None else out

    return project
