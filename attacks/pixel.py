"""Off-manifold (pixel-space) attacks: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Written here rather than taken from foolbox because the adaptive evaluation needs two things
foolbox's attacks lack: restarts carried in the batch dimension, and Expectation over
Transformation (Athalye et al. 2018) — averaging input gradients over several forward passes of a
randomised model such as a stochastic projection defense. Against a :class:`DefendedModel` the
gradient itself is BPDA's straight-through estimate, so ``LinfPGD(eot=k)`` is BPDA + EOT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.attacks.base import Attack
from manifold_defense.validation import InputError

__all__ = ["FGSM", "LinfPGD", "L2PGD", "ProjectedGradientDescent", "FastGradientSignMethod"]


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``eot`` forward passes of ∇ₓ CE(model(x), y), and the mean per-sample loss."""
    grad = torch.zeros_like(x)
    total = torch.zeros(len(x), device=x.device)
    with torch.enable_grad():
        for _ in range(eot):
            xr = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xr), y, reduction="none")
            (g,) = torch.autograd.grad(loss.sum(), xr)
            grad += g
            total += loss.detach().float()
    return grad / eot, total / eot


def _l2_normalise(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def project_to_ball(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Project each perturbation onto the ℓ∞ or ℓ2 ball of radius ε."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (epsilon / n.clamp_min(1e-12)).clamp(max=1.0)


class FastGradientSignMethod(Attack):
    """FGSM, ℓ∞: ``x + ε·sign(∇ₓ CE)`` clipped to [0, 1] (Goodfellow, Shlens, Szegedy 2015)."""

    norm = "linf"

    def __init__(self, *, eot: int = 1) -> None:
        if eot < 1:
            raise InputError(f"eot must be >= 1, got {eot}")
        self.eot = eot

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        g, _ = _input_gradient(model, x, y.to(x.device), self.eot)
        return (x + epsilon * g.sign()).clamp(0, 1)


class ProjectedGradientDescent(Attack):
    """PGD (Madry et al. 2018) in ℓ∞ or ℓ2: ``steps`` ascent steps on the cross-entropy of size
    ``rel_stepsize·ε`` (default 2.5/steps, so the walk can cross the ball), projection onto the ε-ball
    and [0, 1], optional random start, ``restarts`` random starts run together in the batch, ``eot``
    gradient samples per step. Returns, per sample, the iterate with the highest loss seen over all
    steps and restarts (as APGD does; a misclassified iterate has a high loss).
    """

    def __init__(self, *, norm: str = "linf", steps: int = 40, rel_stepsize: float | None = None,
                 random_start: bool = True, restarts: int = 1, eot: int = 1, seed: int = 0) -> None:
        if norm not in ("linf", "l2"):
            raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")
        rel_stepsize = 2.5 / max(steps, 1) if rel_stepsize is None else rel_stepsize  # Madry et al.: 2.5 ε / steps
        if steps < 1 or restarts < 1 or eot < 1 or rel_stepsize <= 0:
            raise InputError("steps, restarts and eot must be >= 1 and rel_stepsize > 0")
        self.norm, self.steps, self.rel_stepsize = norm, steps, rel_stepsize
        self.random_start, self.restarts, self.eot, self.seed = random_start, restarts, eot, seed

    def _start(self, x: torch.Tensor, epsilon: float, gen: torch.Generator) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(x)
        if self.norm == "linf":
            return (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * epsilon
        d = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        r = torch.rand(x.shape[0], generator=gen, dtype=x.dtype).to(x.device) ** (1 / d[0].numel())
        return _l2_normalise(d) * (epsilon * r).view(-1, *([1] * (x.dim() - 1)))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        n, r = x.shape[0], self.restarts
        gen = torch.Generator().manual_seed(self.seed)
        xr = x.repeat(r, *([1] * (x.dim() - 1)))  # restart-major: row = restart * n + sample
        yr = y.to(x.device).repeat(r)
        delta = project_to_ball(self._start(xr, epsilon, gen), epsilon, self.norm)
        adv = (xr + delta).clamp(0, 1)
        step = self.rel_stepsize * epsilon
        # Keep each row's highest-loss iterate (every iterate is scored by the forward pass that also
        # gives the next gradient): a success found mid-way is never lost to a later step.
        best = adv.clone()
        best_loss = torch.full((len(adv),), -torch.inf, device=x.device, dtype=x.dtype)
        for t in range(self.steps + 1):
            g, loss = _input_gradient(model, adv, yr, self.eot)
            better = loss > best_loss
            best[better], best_loss[better] = adv[better], loss[better].to(x.dtype)
            if t == self.steps:
                break
            direction = g.sign() if self.norm == "linf" else _l2_normalise(g)
            adv = (xr + project_to_ball(adv + step * direction - xr, epsilon, self.norm)).clamp(0, 1)
        if r == 1:
            return best
        pick = best_loss.view(r, n).argmax(0)  # the restart with the highest loss
        return best.view(r, n, *x.shape[1:])[pick, torch.arange(n, device=x.device)]


class LinfPGD(ProjectedGradientDescent):
    """PGD in ℓ∞ (keyword arguments as :class:`ProjectedGradientDescent`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(norm="linf", **kwargs)


class L2PGD(ProjectedGradientDescent):
    """PGD in ℓ2 (keyword arguments as :class:`ProjectedGradientDescent`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(norm="l2", **kwargs)


FGSM = FastGradientSignMethod
