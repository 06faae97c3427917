"""On-manifold attacks: adversarial examples on the generator's range.

``LatentPGD`` — Stutz, Hein, Schiele, "Disentangling Adversarial Robustness and Generalization",
CVPR 2019 (on-manifold PGD in latent space), with the image-space budget of Ilyas et al. 2017:
``x' = G(z')`` with ``‖G(z') − G(ẑ(x))‖₂ ≤ η``, where ``ẑ(x)`` is the projection of ``x`` (the shared
inversion core). Success means the model misclassifies ``x'`` with respect to ``x``'s label.

``OverpoweredAttack`` — Ilyas, Jalal, Asteri, Daskalakis, Dimakis, "The Robust Manifold Defense",
2017: a pair ``z1, z2`` with ``‖G(z1) − G(z2)‖₂ ≤ η`` on which the classifier disagrees, found by a
penalty (Lagrangian) method with an increasing multiplier.

On a ``DefendedModel`` both differentiate the model's classifier at
``G(z)`` — a point on the range is its own projection — and score success on the full defended model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.attacks.base import Attack, Crafted, FirstSuccess, on_rows
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.inversion import descend
from manifold_defense.utils import state_digest
from manifold_defense.validation import InputError, check_compatible

__all__ = ["LatentPGD", "OnManifoldPGD", "OverpoweredAttack", "pull_back"]


def pull_back(generator: nn.Module, z0: torch.Tensor, z: torch.Tensor, x0: torch.Tensor, eta: float,
              bisection_steps: int = 10) -> torch.Tensor:
    """Move each ``z`` back along the segment from ``z0`` to the largest t in [0, 1] (batched bisection)
    with ``‖G(z0 + t (z − z0)) − x0‖₂ ≤ η``; rows already inside stay where they are."""
    with torch.no_grad():
        inside = (generator(z) - x0).flatten(1).norm(dim=1) <= eta
        lo = torch.zeros(len(z), device=z.device, dtype=z.dtype)
        hi = torch.ones_like(lo)
        for _ in range(bisection_steps):
            mid = (lo + hi) / 2
            ok = (generator(z0 + mid[:, None] * (z - z0)) - x0).flatten(1).norm(dim=1) <= eta
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        t = torch.where(inside, torch.ones_like(lo), lo)
    return z0 + t[:, None] * (z - z0)


def _differentiable_classifier(model: nn.Module, generator: nn.Module) -> nn.Module:
    """What the latent search differentiates: a defended model's bare classifier when the attack searches its
    own generator's range (there the projection returns G(z) itself), else the defended model with its own
    gradient mode — e.g. a class model's G(z, c) is not on an unconditional defense's range, and the
    projection that moves it must be in the gradient."""
    if isinstance(model, DefendedModel):
        same = model.generator is generator or state_digest(model.generator) == state_digest(generator)
        return model.classifier if same else model
    if hasattr(model, "input_shape"):
        check_compatible(generator, model)
    return model


class LatentPGD(Attack):
    """Latent PGD from the projection ``ẑ(x)``: steepest ascent on the cross-entropy in latent space, with one
    of two budgets (``epsilon`` is η):

    - ``budget="image_l2"`` (Ilyas et al. 2017): ``‖G(z') − G(ẑ)‖₂ ≤ η``; normalised steps of size
      ``latent_stepsize`` (default 0.1), each ``z'`` pulled back along the segment from ``ẑ`` by a batched
      bisection;
    - ``budget="latent_linf"`` (Stutz et al. 2019: η = 0.3, 40 iterations): ``‖z' − ẑ‖∞ ≤ η``; sign steps of
      size ``latent_stepsize`` (default 2.5 η / steps, Madry et al.'s rule), clipped to the box. Its norms
      are latent-space norms (``norm = "latent_linf"``).
    """

    BUDGETS = ("image_l2", "latent_linf")
    #: 1: the search's own verdicts kept (a success is not lost to re-scoring in another batch shape); on a
    #: defended model whose generator is not the attack's, gradients through the defended model
    revision = 1

    def __init__(self, generator: nn.Module, *, steps: int = 40, latent_stepsize: float | None = None,
                 budget: str = "image_l2", projection: ProjectionConfig | None = None, bisection_steps: int = 10,
                 check_every: int = 1) -> None:
        if steps < 1 or (latent_stepsize is not None and latent_stepsize <= 0) or bisection_steps < 1 or check_every < 1:
            raise InputError("steps, bisection_steps and check_every must be >= 1 and latent_stepsize > 0")
        if budget not in self.BUDGETS:
            raise InputError(f"budget must be one of {', '.join(self.BUDGETS)}, got {budget!r}")
        self.check_every, self.budget = check_every, budget
        self.norm = "l2" if budget == "image_l2" else "latent_linf"
        self.generator = generator
        self.steps, self.latent_stepsize, self.bisection_steps = steps, latent_stepsize, bisection_steps
        self.projection = projection or ProjectionConfig(steps=200, restarts=4)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection.project(self.generator, x).z

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Latent PGD from the projection; each sample keeps its first ``G(z')`` the attacked model misclassifies."""
        classifier = _differentiable_classifier(model, self.generator)
        y = y.to(x.device)
        z0 = self._project(x)
        with torch.no_grad():
            x0 = self.generator(z0)
        box = self.budget == "latent_linf"

        def project(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if box:
                return z0[rows] + (z - z0[rows]).clamp(-epsilon, epsilon)
            return pull_back(self.generator, z0[rows], z, x0[rows], epsilon, self.bisection_steps)

        check = FirstSuccess(model, y, reuse=classifier is model, prefilter=True, check_every=self.check_every,
                             transform=lambda img, z, rows: img.clamp(0, 1))

        def loss(img: torch.Tensor, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logits = classifier(img)
            check.record(logits)
            return -F.cross_entropy(logits, y[rows], reduction="none").to(img.dtype)

        lr = self.latent_stepsize or (2.5 * epsilon / self.steps if box else 0.1)
        z = descend(z0, self.generator, loss, steps=self.steps, lr=lr, step_rule="sign" if box else "l2",
                    project=project, until=check, keep="last", desc="latent-pgd").variables
        with torch.no_grad():
            adv = self.generator(z)
        reached = check.hit_rows.clone()  # these rows' iterates are the ones the attacked model misclassified
        return Crafted(adv.clamp(0, 1), x0, (z - z0).abs().amax(1) if box else None, reached)


class OverpoweredAttack(Attack):
    """The overpowered attack of Ilyas et al. 2017 with labels: from ``z1 = z2 = ẑ(x)`` (plus noise on
    ``z2``) minimise ``CE(C(G(z1)), y) − min(CE(C(G(z2)), y), cap) + λ·max(‖G(z1) − G(z2)‖₂ − η, 0)²``
    over the pair, ``λ`` growing ×10 over ``rounds``; a final bisection puts ``G(z2)`` within η of
    ``G(z1)``. Returns ``(G(z2), G(z1))``: the adversarial input and the reference its norm is measured
    from. Success means the model assigns ``G(z2)`` a label other than ``y`` (the reference keeps ``y``'s
    evidence by the first term). ``epsilon`` is η.
    """

    norm = "l2"

    def __init__(self, generator: nn.Module, *, steps: int = 100, lr: float = 0.05, rounds: int = 3,
                 multiplier: float = 1.0, cap: float = 10.0, init_scale: float = 0.1,
                 projection: ProjectionConfig | None = None, seed: int = 0, check_every: int = 1) -> None:
        if check_every < 1:
            raise InputError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        if steps < 1 or rounds < 1 or lr <= 0 or multiplier <= 0 or cap <= 0:
            raise InputError("steps and rounds must be >= 1; lr, multiplier and cap > 0")
        self.generator, self.steps, self.lr, self.rounds = generator, steps, lr, rounds
        self.multiplier, self.cap, self.init_scale, self.seed = multiplier, cap, init_scale, seed
        self.projection = projection or ProjectionConfig(steps=200, restarts=4)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Search the pair; a sample keeps its first pair within η whose ``G(z2)`` the attacked model misclassifies."""
        classifier = _differentiable_classifier(model, self.generator)
        y = y.to(x.device)
        g = self.generator
        z_hat = self.projection.project(g, x).z
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(z_hat.shape, generator=gen, dtype=z_hat.dtype).to(z_hat.device)
        pair = torch.stack([z_hat, z_hat + self.init_scale * noise], 1)  # (n, 2, k)

        def decode(v: torch.Tensor) -> torch.Tensor:
            return g(v.flatten(0, 1)).view(len(v), 2, *g.output_shape)

        check = FirstSuccess(model, y, reuse=classifier is model, prefilter=True, check_every=self.check_every,
                             transform=lambda img, v, rows: img[:, 1].clamp(0, 1))

        def disagreement(img: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logits = classifier(img.flatten(0, 1)).view(len(img), 2, -1)
            check.record(logits[:, 1])
            keep = F.cross_entropy(logits[:, 0], y[rows], reduction="none")
            flip = F.cross_entropy(logits[:, 1], y[rows], reduction="none").clamp_max(self.cap)
            return keep - flip

        def success(img: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            within = (img[:, 1] - img[:, 0]).flatten(1).norm(dim=1) <= epsilon
            return within & check(img, v, rows)

        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for r in range(self.rounds):  # the Lagrange multiplier on ‖G(z1) − G(z2)‖₂ ≤ η grows ×10 per round
            lam = self.multiplier * 10**r
            todo = (~broken).nonzero().squeeze(1)
            if todo.numel() == 0:
                break

            def distance(img: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, lam: float = lam) -> torch.Tensor:
                return lam * torch.relu((img[:, 1] - img[:, 0]).flatten(1).norm(dim=1) - epsilon).pow(2)

            sub = on_rows(todo)
            res = descend(pair[todo], decode, sub(disagreement), penalties=[sub(distance)], steps=self.steps,
                          lr=self.lr, step_rule="adam", until=sub(success), desc="overpowered")
            pair[todo] = res.variables.detach()
            broken[todo] = res.reached
        with torch.no_grad():
            ref = g(pair[:, 0])
        z2 = pull_back(g, pair[:, 0], pair[:, 1], ref, epsilon)
        with torch.no_grad():
            adv = g(z2)
        return Crafted(adv.clamp(0, 1), ref.clamp(0, 1))


OnManifoldPGD = LatentPGD
