"""Attacks: off-manifold (pixel), adaptive (BPDA, EOT, latent reparameterisation) and on-manifold.

Against a :class:`~manifold_defense.defended.DefendedModel`, gradient attacks receive BPDA's
straight-through gradient of the projection, so the pixel attacks here are adaptive by default.
"""

from manifold_defense.attacks.adapters import AutoAttack, CarliniWagnerL2
from manifold_defense.attacks.base import Attack, AttackResult, TransferAttack, perturbation_norm
from manifold_defense.attacks.on_manifold import LatentPGD, OnManifoldPGD
from manifold_defense.attacks.pixel import FGSM, L2PGD, FastGradientSignMethod, LinfPGD, ProjectedGradientDescent

__all__ = ["LatentPGD", "OnManifoldPGD", "AutoAttack", "CarliniWagnerL2", "Attack", "AttackResult", "TransferAttack", "perturbation_norm", "FGSM", "FastGradientSignMethod", "LinfPGD", "L2PGD",
           "ProjectedGradientDescent"]
