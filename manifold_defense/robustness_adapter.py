"""The one adapter to MadryLab's ``robustness`` library (Engstrom et al., 2019).

Only its attack steps are used (``robustness.attack_steps.L2Step`` / ``LinfStep``: the projection, the
steepest-ascent step and the random start of Madry et al.'s PGD). Its ``Attacker.forward`` hard-codes
``.cuda()`` and its package imports a torchvision module that no longer exists, so neither the attacker
nor the package-level helpers are imported: the PGD loop around the steps is written here, device-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.validation import InputError

__all__ = ["madry_step", "madry_pgd"]


def madry_step(norm: str, x: torch.Tensor, epsilon: float, step_size: float):
    """The robustness library's attack step for ``norm`` ('l2' or 'linf') around ``x``."""
    from robustness.attack_steps import L2Step, LinfStep  # the module itself needs only torch

    if norm not in ("l2", "linf"):
        raise InputError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if not epsilon > 0 or not step_size > 0:
        raise InputError(f"epsilon and step_size must be > 0, got {epsilon}, {step_size}")
    return (L2Step if norm == "l2" else LinfStep)(orig_input=x, eps=epsilon, step_size=step_size)


def madry_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, epsilon: float, steps: int,
              step_size: float | None = None, random_start: bool = True) -> torch.Tensor:
    """Madry et al. 2018 PGD with the robustness library's steps: ``steps`` ascent steps on the
    cross-entropy, each projected onto the ε-ball around ``x`` and [0, 1]. Default step 2.5 ε / steps."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    step = madry_step(norm, x.detach(), epsilon, 2.5 * epsilon / steps if step_size is None else step_size)
    adv = step.project(step.random_perturb(x.detach())) if random_start else x.detach().clone()
    for _ in range(steps):
        with torch.enable_grad():
            adv = adv.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        with torch.no_grad():
            adv = step.project(step.step(adv, g))
    return adv.detach()
