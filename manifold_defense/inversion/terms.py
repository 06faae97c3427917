"""Loss terms of the descent engine, composable: a data term (with an optional mask) plus penalties.

Each term is called as ``term(x, v, rows)`` — decoded images, variables, and the rows' indices in
the batch — and returns one value per row (see ``descend``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.validation import InputError

__all__ = ["LossFn", "per_sample_loss", "projection_residual", "dead_zone_loss", "total_variation", "DataTerm", "LatentPrior",
           "TotalVariation", "negative_cross_entropy", "QUADRATIC_SCALE"]

#: ``loss(A(x), y) → (N,)``: a per-sample loss between predicted and observed measurements.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Losses that are a fixed multiple of ‖pred − y‖² (``None``: divided by the number of entries).
QUADRATIC_SCALE: dict[str, float | None] = {"mse": None, "sum": 1.0, "sse": 0.5}


def per_sample_loss(loss: str | LossFn) -> LossFn:
    """'mse' (mean over measurement entries, Bora et al. 2017), 'sum' (‖A G(z) − y‖²: with
    A ~ N(0, 1/m) this equals CSGM's mean loss under its A ~ N(0, 1)), 'sse' (½‖A G(z) − y‖², Hand &
    Voroninski 2018), or a callable ``(pred, y) → per-sample loss`` returned as it is."""
    if callable(loss):
        return loss
    if loss == "mse":
        return lambda pred, y: (pred - y).pow(2).flatten(1).mean(1)
    if loss == "sum":
        return lambda pred, y: (pred - y).pow(2).flatten(1).sum(1)
    if loss == "sse":
        return lambda pred, y: 0.5 * (pred - y).pow(2).flatten(1).sum(1)
    raise InputError(f"unknown loss {loss!r}; use 'mse', 'sum', 'sse' or a callable (pred, y) -> per-sample loss")


def projection_residual(r: torch.Tensor, dead_zone: float = 0.0) -> torch.Tensor:
    """Per entry, the projection's loss ρ of a residual ``r = G(z) − x``: ``r²``, or with a dead zone τ > 0
    ``max(|r| − τ, 0)²`` (ILO, Daras et al. 2021). The one definition the projection (through
    ``dead_zone_loss``), its implicit derivative and the range-target attack share."""
    return torch.relu(r.abs() - dead_zone).pow(2) if dead_zone > 0 else r.pow(2)


def dead_zone_loss(tau: float) -> LossFn:
    """Mean over entries of ``max(|pred − y| − τ, 0)²`` (``projection_residual``): residuals up to τ cost
    nothing.

    The dead-zone term of ILO's public code (Daras et al. 2021): a projection with this loss ignores
    bounded per-entry noise such as an ℓ∞ perturbation of size ≤ τ. ``τ = 0`` is the mean squared error.
    """
    if not tau >= 0:
        raise InputError(f"dead-zone width must be >= 0, got {tau}")
    return lambda pred, y: projection_residual(pred - y, tau).flatten(1).mean(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image anisotropic total variation: mean |horizontal| + mean |vertical| neighbour difference."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dv + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)


class DataTerm:
    """``loss(operator(x), target[rows])``, optionally on the entries where ``mask[rows]`` is 1 only.

    ``target`` (and ``mask``) hold one row per descent row (repeat them for restarts). With a mask the
    loss must be quadratic ('mse' becomes the mean over the kept entries, 'sum'/'sse' their sum): a
    custom callable cannot be restricted to entries, so it is refused rather than silently unmasked.
    """

    def __init__(self, target: torch.Tensor, operator: nn.Module | Callable | None = None,
                 loss: str | LossFn = "mse", mask: torch.Tensor | None = None) -> None:
        if mask is not None and not (isinstance(loss, str) and loss in QUADRATIC_SCALE):
            raise InputError(f"measurement weights (a mask) need a squared-error loss ('mse', 'sum', 'sse'), got "
                             f"{loss!r}: a custom loss cannot be restricted to some entries")
        self.target, self.operator, self.mask = target, operator, mask
        self.loss_name = loss if isinstance(loss, str) else None
        self.lossfn = per_sample_loss(loss)

    def __call__(self, x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pred = self.operator(x) if self.operator is not None else x
        y = self.target[rows]
        if self.mask is None:
            return self.lossfn(pred, y)
        w = self.mask[rows].to(pred.dtype)
        sq = ((pred - y).pow(2) * w).flatten(1).sum(1)
        scale = QUADRATIC_SCALE[self.loss_name]  # type: ignore[index]
        return sq / w.flatten(1).sum(1).clamp_min(1) if scale is None else scale * sq


class LatentPrior:
    """``weight · ‖v‖²`` per row: the Gaussian prior on latents of CSGM's "VAE+Reg" (Bora et al. 2017)."""

    def __init__(self, weight: float) -> None:
        if weight < 0:
            raise InputError(f"prior_weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def __call__(self, x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.weight * v.pow(2).flatten(1).sum(1)


class TotalVariation:
    """``weight · TV(x)`` per row (``total_variation``), an image-smoothness penalty for the Deep Image Prior."""

    def __init__(self, weight: float) -> None:
        if weight < 0:
            raise InputError(f"tv_weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def __call__(self, x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.weight * total_variation(x)


def negative_cross_entropy(model: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor
                           ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``−CE(model(x), labels[rows])`` per row: the data term of an untargeted attack (the engine minimises)."""

    def term(x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(model(x), labels[rows], reduction="none").to(x.dtype)

    return term
