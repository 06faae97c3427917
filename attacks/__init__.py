"""Attacks: off-manifold (pixel), adaptive (BPDA, EOT, latent reparameterisation) and on-manifold
(unconditional, and label-preserving on a class-conditional generator).

Against a ``DefendedModel``, gradient attacks receive BPDA's
straight-through gradient of the projection, so the pixel attacks here are adaptive by default.
"""

from manifold_defense.attacks.adapters import AutoAttack, CarliniWagnerL2, HopSkipJump
from manifold_defense.attacks.adaptive import (
    BPDA,
    BackwardPassDifferentiableApproximation,
    ImplicitPGD,
    LatentReparam,
    LatentReparameterization,
    SurrogateTransfer,
    UnrolledPGD,
    margin_loss,
)
from manifold_defense.attacks.base import Attack, AttackResult, Crafted, FirstSuccess, TransferAttack, perturbation_norm
from manifold_defense.attacks.class_conditional import (
    ClassConditionalLatentPGD,
    ClassConditionalOverpowered,
    PerClassAttack,
)
from manifold_defense.attacks.latent_descent import LatentDescent
from manifold_defense.attacks.on_manifold import LatentPGD, OnManifoldPGD, OverpoweredAttack
from manifold_defense.attacks.pixel import FGSM, L2PGD, FastGradientSignMethod, LinfPGD, ProjectedGradientDescent
from manifold_defense.attacks.range_target import RangeTarget, RangeTargetAttack, RangeTargetPGD

__all__ = ["BPDA", "BackwardPassDifferentiableApproximation", "ImplicitPGD", "LatentReparam", "LatentReparameterization",
           "RangeTarget", "RangeTargetAttack", "RangeTargetPGD", "SurrogateTransfer", "UnrolledPGD", "margin_loss", "HopSkipJump", "OverpoweredAttack", "LatentPGD", "OnManifoldPGD", "AutoAttack", "CarliniWagnerL2", "Attack", "AttackResult", "Crafted", "FirstSuccess", "TransferAttack", "perturbation_norm", "FGSM", "FastGradientSignMethod", "LinfPGD", "L2PGD",
           "ProjectedGradientDescent", "LatentDescent", "ClassConditionalLatentPGD", "ClassConditionalOverpowered", "PerClassAttack"]
