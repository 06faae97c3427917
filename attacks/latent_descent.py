"""The latent-descent attack of Schott, Rauber, Bethge, Brendel (ICLR 2019), made for analysis by synthesis.

A model that classifies by which class's generator explains the input best (``
AnalysisBySynthesis``) hands the attacker its own targets: the best fit of the input by every other class. Each
step moves the input a fraction of the way towards the reconstruction of the closest wrong class (the highest
wrong logit) — ``v ← v + step · (G_c(ẑ_c(v)) − v)`` — then back into the ε-ball around ``x`` and ``[0, 1]``;
the reconstructions are refitted at every step. No gradient of the model is used, so a gradient it masks does not
stop it. The paper runs it as a minimal-perturbation attack (walk until the label flips, then a line search); here
the walk is bounded by ``epsilon`` like every attack of a suite, and a sample stops at its first misclassified
iterate, scored on the attacked model.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_defense.attacks.base import Attack, Crafted, FirstSuccess
from manifold_defense.attacks.pixel import _identity
from manifold_defense.inversion import descend
from manifold_defense.inversion.constraints import ball_projection
from manifold_defense.validation import InputError

__all__ = ["LatentDescent"]


class LatentDescent(Attack):
    """Schott et al. 2019's latent descent in an ℓ2 or ℓ∞ ball of ``epsilon``: ``steps`` moves of ``step_size``
    (a fraction of the way) towards the closest wrong class's reconstruction. The model must expose
    ``reconstructions(x) -> (images (n, C, ...), logits (n, C))``, as ``AnalysisBySynthesis`` does."""

    def __init__(self, *, norm: str = "l2", steps: int = 50, step_size: float = 0.1) -> None:
        if norm not in ("l2", "linf"):
            raise InputError(f"norm must be 'l2' or 'linf', got {norm!r}")
        if steps < 1 or not 0 < step_size <= 1:
            raise InputError(f"latent descent needs steps >= 1 and 0 < step_size <= 1, got {steps}, {step_size}")
        self.norm, self.steps, self.step_size = norm, int(steps), float(step_size)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Walk every sample towards its closest wrong class's reconstruction; its first misclassified iterate."""
        if not callable(getattr(model, "reconstructions", None)):
            raise InputError(f"latent descent needs a model with per-class reconstructions (reconstructions(x), "
                             f"e.g. AnalysisBySynthesis); {type(model).__name__} has none")
        y = y.to(x.device)
        check = FirstSuccess(model, y, reuse=True)

        def distance_to_target(images: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            recs, logits = model.reconstructions(v.detach())
            check.record(logits)
            wrong = logits.scatter(1, y[rows, None], -torch.inf)
            target = recs[torch.arange(len(rows), device=v.device), wrong.argmax(1)].to(v.dtype)
            # ½‖v − T‖² with T held fixed: one gradient step of size s is v + s (T − v)
            return 0.5 * (v - target).pow(2).flatten(1).sum(1)

        res = descend(x.detach().clone(), _identity, distance_to_target, steps=self.steps, lr=self.step_size,
                      step_rule="gd", project=ball_projection(x, epsilon, self.norm), until=check, keep="last",
                      desc="latent-descent")
        return Crafted(res.variables.detach(), reached=check.hit_rows.clone(),
                       crafted_on="the model's per-class reconstructions (no gradient)")
