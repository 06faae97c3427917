"""Off-manifold (pixel-space) attacks: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Written here rather than taken from foolbox because the adaptive evaluation needs two things
foolbox's attacks lack: restarts carried in the batch dimension, and Expectation over
Transformation (Athalye et al. 2018) — averaging input gradients over several forward passes of a
randomised model such as a stochastic projection defense. Both run on the library's descent engine
(``descend``): the variables are the images, the data term the
negated cross-entropy, the step rule a sign (ℓ∞) or normalised (ℓ2) step, the projection the ε-ball
intersected with [0, 1]. Against a ``DefendedModel`` the gradient itself is BPDA's
straight-through estimate, so ``LinfPGD(eot=k)`` is BPDA + EOT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.attacks.base import Attack, Crafted, FirstSuccess
from manifold_defense.inversion import ball_projection, descend, project_lp_ball
from manifold_defense.inversion.constraints import NORMS
from manifold_defense.inversion.engine import StepRule, get_step_rule
from manifold_defense.inversion.terms import negative_cross_entropy
from manifold_defense.validation import InputError

__all__ = ["FGSM", "LinfPGD", "L2PGD", "ProjectedGradientDescent", "FastGradientSignMethod",
           "project_to_ball"]

project_to_ball = project_lp_ball  # the ℓp-ball projection, under the name attacks have always used


def margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """Carlini–Wagner margin ``max(z_y − max_{j≠y} z_j, −κ)`` per sample: negative once misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -torch.inf).amax(1)
    return (true - other).clamp_min(-kappa)


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


class FastGradientSignMethod(Attack):
    """FGSM, ℓ∞: ``x + ε·sign(∇ₓ CE)`` clipped to [0, 1] (Goodfellow, Shlens, Szegedy 2015): one sign step
    of the engine (``eot`` gradient draws averaged)."""

    norm = "linf"

    def __init__(self, *, eot: int = 1) -> None:
        if eot < 1:
            raise InputError(f"eot must be >= 1, got {eot}")
        self.eot = eot

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        res = descend(x, _identity, negative_cross_entropy(model, y.to(x.device)), steps=1, lr=epsilon, step_rule="sign",
                      project=ball_projection(x, epsilon, "linf"), keep="last", eot=self.eot, desc="fgsm")
        return res.variables


class ProjectedGradientDescent(Attack):
    """PGD (Madry et al. 2018) in ℓ∞ or ℓ2: ``steps`` ascent steps on the cross-entropy of size
    ``rel_stepsize·ε`` (default 2.5/steps, so the walk can cross the ball), projection onto the ε-ball
    and [0, 1], optional random start, ``restarts`` random starts run together in the batch, ``eot``
    gradient samples per step; ``loss`` is the cross-entropy ('ce') or the Carlini–Wagner margin
    ('margin', often stronger against defenses that flatten the softmax). A success is never lost: each
    restart stops at, and keeps, the first iterate the attacked model misclassifies (scored on the attacked
    model itself, ``scorer``, when the gradients come from another model: every step, or every
    ``check_every``-th step plus wherever the crafting model already misclassifies); samples never broken
    keep their highest-loss iterate over all steps and restarts. ``get_step_rule()`` is the hook for another
    ascent direction.

    ``warm_steps`` = m > 0 against a deterministic ``DefendedModel`` (BPDA or
    implicit gradient): every ``check_every``-th step crafts on — and is scored by — the model itself (its cold
    projection); the steps in between craft on a projection warm-started at each row's previous ``ẑ`` (m
    steps of the model's optimizer, ``DefendedModel.classify_from``), and the
    rows whose warm logits are already wrong are scored on the model. Cheaper crafting, same scoring: a
    success still needs the model's own answer. Behind the default projection the projection is only part of
    a step's cost, and the warm one crafts a little worse: implicit PGD at ℓ∞ 0.3 on 60 BPDA survivors of
    mnist-vae20, every 4th step cold with 10 warm steps between, broke 34 where cold crafting broke 38, for
    22 % less CPU (5 warm steps: 33, 25 % less) — so no suite uses it.
    """

    #: see the class docstring (0: every step crafts on the model's own, cold projection)
    warm_steps: int = 0

    def __init__(self, *, norm: str = "linf", steps: int = 40, rel_stepsize: float | None = None,
                 random_start: bool = True, restarts: int = 1, eot: int = 1, seed: int = 0, loss: str = "ce",
                 check_every: int = 1, warm_steps: int = 0) -> None:
        if norm not in NORMS:
            raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if loss not in ("ce", "margin"):
            raise InputError(f"loss must be 'ce' (cross-entropy) or 'margin' (Carlini-Wagner), got {loss!r}")
        self.loss = loss
        rel_stepsize = 2.5 / max(steps, 1) if rel_stepsize is None else rel_stepsize  # Madry et al.: 2.5 ε / steps
        if steps < 1 or restarts < 1 or eot < 1 or rel_stepsize <= 0:
            raise InputError("steps, restarts and eot must be >= 1 and rel_stepsize > 0")
        self.norm, self.steps, self.rel_stepsize = norm, steps, rel_stepsize
        self.random_start, self.restarts, self.eot, self.seed = random_start, restarts, eot, seed
        if check_every < 1:
            raise InputError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        if warm_steps < 0:
            raise InputError(f"warm_steps must be >= 0 (0: every step projects cold), got {warm_steps}")
        if warm_steps:  # an instance field only when used: records made before it existed keep their fingerprint
            self.warm_steps = warm_steps

    def get_step_rule(self) -> StepRule:
        """Steepest ascent in the attack's norm: sign steps (ℓ∞) or normalised gradients (ℓ2)."""
        return get_step_rule("sign" if self.norm == "linf" else "l2")

    def _start(self, x: torch.Tensor, epsilon: float, gen: torch.Generator) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(x)
        if self.norm == "linf":
            return (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * epsilon
        d = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        r = torch.rand(x.shape[0], generator=gen, dtype=x.dtype).to(x.device) ** (1 / d[0].numel())
        return d * (epsilon * r).view(-1, *([1] * (x.dim() - 1)))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
            scorer: nn.Module | None = None, extra_starts: torch.Tensor | None = None) -> Crafted:
        """PGD on ``model``'s gradients; ``scorer`` is the attacked model when ``model`` is only the one the
        gradients come from (a BPDA, implicit or surrogate variant): success is then checked on ``scorer``.
        ``extra_starts`` ``(n, K, …)``: more restarts from these points (inside the ε-ball around ``x``).
        A sample's restarts all stop as soon as one of them breaks it."""
        n = x.shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        xr = x.repeat(self.restarts, *([1] * (x.dim() - 1)))  # restart-major: row = restart * n + sample
        start = (xr + project_to_ball(self._start(xr, epsilon, gen), epsilon, self.norm)).clamp(0, 1)
        if extra_starts is not None and extra_starts.shape[1] > 0:
            k = extra_starts.shape[1]
            start = torch.cat([start, extra_starts.transpose(0, 1).reshape(k * n, *x.shape[1:]).to(start)])
            xr = x.repeat(self.restarts + k, *([1] * (x.dim() - 1)))
        r = len(xr) // n
        yr = y.to(x.device).repeat(r)
        # With a separate scorer every unbroken iterate is scored on it (with check_every = k > 1: every k-th
        # step, and in between where the crafting model's own logits already say "misclassified").
        warm = self._warm(model)
        check = FirstSuccess(scorer if scorer is not None else model, yr, reuse=scorer is None,
                             prefilter=scorer is not None or warm, check_every=self.check_every,
                             groups=torch.arange(len(yr), device=yr.device) % n)
        if warm:  # each row's latest ẑ (NaN until its first cold projection) and the objective's call count
            z_prev = torch.full((len(yr), model.generator.latent_dim), float("nan"), dtype=x.dtype, device=x.device)
            calls = [0]

        def loss(images: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if warm:
                calls[0] += 1
                cold = (calls[0] - 1) % self.check_every == 0 or bool(z_prev[rows].isnan().any())
                if cold:
                    logits, res = model.classify(images)
                else:
                    logits, res = model.classify_from(images, z_prev[rows], steps=self.warm_steps)
                z_prev[rows] = res.z.detach().to(z_prev.dtype)
                check.record(logits, exact=cold and scorer is None)
            else:
                logits = model(images)
                check.record(logits)
            if self.loss == "margin":
                return margin(logits, yr[rows]).to(images.dtype)
            return -F.cross_entropy(logits, yr[rows], reduction="none").to(images.dtype)

        res = descend(start, _identity, loss, steps=self.steps, lr=self.rel_stepsize * epsilon,
                      step_rule=self.get_step_rule(), project=ball_projection(xr, epsilon, self.norm), until=check,
                      eot=self.eot, desc="pgd")
        hits = check.hit_rows  # these rows' kept iterates are the ones the scorer misclassified
        if r == 1:
            return Crafted(res.variables, reached=hits.clone())
        # a restart that broke the sample, else the one with the highest loss (rows a sibling's success stopped
        # are neither: their objective is not the loss of a finished search, so they never win)
        stopped = res.reached & ~hits
        score = torch.where(hits, torch.full_like(res.objective, -torch.inf),
                            torch.where(stopped, torch.full_like(res.objective, torch.inf), res.objective))
        pick = score.view(r, n).argmin(0)
        cols = torch.arange(n, device=x.device)
        return Crafted(res.variables.view(r, n, *x.shape[1:])[pick, cols], reached=hits.view(r, n)[pick, cols])

    def _warm(self, model: nn.Module) -> bool:
        """Whether this run crafts on warm-started projections (``warm_steps`` > 0 and a model that has them)."""
        if self.warm_steps == 0:
            return False
        from manifold_defense.defended import DefendedModel

        return (isinstance(model, DefendedModel) and not model.projection.stochastic
                and model.gradient in ("bpda", "implicit"))


class LinfPGD(ProjectedGradientDescent):
    """PGD in ℓ∞ (keyword arguments as ``ProjectedGradientDescent``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(norm="linf", **kwargs)


class L2PGD(ProjectedGradientDescent):
    """PGD in ℓ2 (keyword arguments as ``ProjectedGradientDescent``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(norm="l2", **kwargs)


FGSM = FastGradientSignMethod
