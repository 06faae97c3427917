"""The inversion core: find variables whose generated image explains measurements.

    ẑ = argmin_z  loss(A(G(z)), y) + λ‖z‖²

Used by the defense (A = identity), by compressed sensing and other inverse problems, by
classifier-guided generation (A = a classifier, loss = cross-entropy to a target class), and — with
the sign flipped — by the attacks. Every method is a thin recipe over one loop,
``descend``:

- ``csgm`` — Bora, Jalal, Price, Dimakis 2017; restarts in the batch, the best kept per sample.
- ``ilo`` — Daras, Dean, Jalal, Dimakis 2021: intermediate layers within ℓ1 balls, radii chosen
  per sample on held-out measurements.
- ``subgradient`` — Hand & Voroninski 2018: gradient descent with the negation step.
- ``dip`` — Ulyanov et al. 2018; Van Veen et al. 2018: the weights of an untrained network.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_defense.inversion.constraints import ball_projection, project_l1_ball, project_lp_ball
from manifold_defense.inversion.csgm import csgm
from manifold_defense.inversion.dip import DIPWeightPrior, dip, fit_dip_prior
from manifold_defense.inversion.engine import (
    Adam,
    Descent,
    GradientDescent,
    Momentum,
    NormalizedStep,
    SignStep,
    StepRule,
    descend,
    get_step_rule,
)
from manifold_defense.inversion.ilo import ilo
from manifold_defense.inversion.result import DivergenceWarning, InversionResult
from manifold_defense.inversion.subgradient import subgradient
from manifold_defense.inversion.terms import (
    DataTerm,
    LatentPrior,
    TotalVariation,
    dead_zone_loss,
    projection_residual,
    total_variation,
)
from manifold_defense.operators import Operator
from manifold_defense.validation import InputError

__all__ = ["InversionResult", "invert", "METHODS", "csgm", "ilo", "subgradient", "dip", "fit_dip_prior",
           "DIPWeightPrior", "descend", "Descent", "StepRule", "Adam", "Momentum", "GradientDescent", "SignStep",
           "NormalizedStep", "get_step_rule", "DataTerm", "LatentPrior", "TotalVariation", "total_variation",
           "dead_zone_loss", "projection_residual", "project_l1_ball", "project_lp_ball", "ball_projection", "DivergenceWarning"]

#: inversion methods by name
METHODS = {"csgm": csgm, "ilo": ilo, "subgradient": subgradient, "dip": dip}


def invert(generator: nn.Module, y: torch.Tensor, operator: Operator | None = None, *, method: str = "csgm",
           **kwargs) -> InversionResult:
    """Recover images from measurements ``y = A(x) + η`` with ``csgm``, ``ilo``, ``subgradient``
    or ``dip`` (``generator`` is then the untrained network), chosen by name; keyword arguments go to
    the method."""
    if method not in METHODS:
        raise InputError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method](generator, y, operator, **kwargs)
