"""On-manifold attacks: adversarial examples on the generator's range.

:class:`LatentPGD` — Stutz, Hein, Schiele, "Disentangling Adversarial Robustness and Generalization",
CVPR 2019 (on-manifold PGD in latent space), with the image-space budget of Ilyas et al. 2017:
``x' = G(z')`` with ``‖G(z') − G(ẑ(x))‖₂ ≤ η``, where ``ẑ(x)`` is the projection of ``x`` (the shared
inversion core). Success means the model misclassifies ``x'`` with respect to ``x``'s label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.attacks.base import Attack
from manifold_defense.defended import ProjectionConfig
from manifold_defense.inversion import csgm
from manifold_defense.operators import Identity
from manifold_defense.validation import InputError, check_compatible

__all__ = ["LatentPGD", "OnManifoldPGD"]


class LatentPGD(Attack):
    """Normalised gradient ascent on the cross-entropy in latent space (``steps`` steps of size
    ``latent_stepsize``); after each step ``z'`` is pulled back along the segment from ``ẑ`` by a batched
    bisection until ``‖G(z') − G(ẑ)‖₂ ≤ η``. ``epsilon`` is η.
    """

    norm = "l2"

    def __init__(self, generator: nn.Module, *, steps: int = 40, latent_stepsize: float = 0.1,
                 projection: ProjectionConfig | None = None, bisection_steps: int = 10) -> None:
        if steps < 1 or latent_stepsize <= 0 or bisection_steps < 1:
            raise InputError("steps and bisection_steps must be >= 1 and latent_stepsize > 0")
        self.generator = generator
        self.steps, self.latent_stepsize, self.bisection_steps = steps, latent_stepsize, bisection_steps
        self.projection = projection or ProjectionConfig(steps=200, restarts=4)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        kw = self.projection.csgm_kwargs(self.generator)
        return csgm(self.generator, x, Identity(tuple(self.generator.output_shape)), **kw).z

    def _pull_back(self, z0: torch.Tensor, z: torch.Tensor, x0: torch.Tensor, eta: float) -> torch.Tensor:
        """Largest t in [0, 1] (to bisection precision) with ‖G(z0 + t (z − z0)) − x0‖ ≤ η, per sample."""
        with torch.no_grad():
            inside = (self.generator(z) - x0).flatten(1).norm(dim=1) <= eta
            lo = torch.zeros(len(z), device=z.device, dtype=z.dtype)
            hi = torch.ones_like(lo)
            for _ in range(self.bisection_steps):
                mid = (lo + hi) / 2
                ok = (self.generator(z0 + mid[:, None] * (z - z0)) - x0).flatten(1).norm(dim=1) <= eta
                lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
            t = torch.where(inside, torch.ones_like(lo), lo)
        return z0 + t[:, None] * (z - z0)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float):
        if hasattr(model, "input_shape"):
            check_compatible(self.generator, model)
        y = y.to(x.device)
        z0 = self._project(x)
        with torch.no_grad():
            x0 = self.generator(z0)
        z = z0.clone()
        for _ in range(self.steps):
            with torch.enable_grad():
                zr = z.detach().requires_grad_(True)
                loss = F.cross_entropy(model(self.generator(zr)), y, reduction="none")
                (g,) = torch.autograd.grad(loss.sum(), zr)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z = self._pull_back(z0, z + self.latent_stepsize * g, x0, epsilon)
        with torch.no_grad():
            adv = self.generator(z)
        return adv.clamp(0, 1), x0


OnManifoldPGD = LatentPGD
