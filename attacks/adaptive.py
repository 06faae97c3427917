"""Adaptive attacks on projection defenses (Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False
Sense of Security", ICML 2018).

- ``BPDA`` — PGD whose gradient passes the projection by the straight-through estimator, averaged
  over ``eot`` draws of a stochastic projection (BPDA + EOT).
- ``ImplicitPGD`` — PGD whose gradient is the exact local derivative of the converged projection
  (implicit differentiation, ``manifold_defense.implicit``): no approximation of the projection, no
  unrolling memory, no EOT for a deterministic projection.
- ``UnrolledPGD`` — PGD backpropagating end to end through a short unrolled projection.
- ``LatentReparameterization`` — search ``z`` near the projection ``ẑ(x)`` so that ``G(z)`` lies
  within ε of ``x`` and is misclassified; ``G(z)`` is on the generator's range, so the defense's own
  projection returns (close to) it. This is the attack that broke Defense-GAN.
- ``RangeTargetAttack`` (its own module) — through the
  projection's own loss, for projections whose loss masks gradients (a dead zone).

Crafting may use a cheaper *surrogate* projection than the attacked model's (``projection=``). Success is
always checked on the attacked model itself, but a weaker surrogate makes a weaker attack — and a weaker
attack reports robustness that is too high; use one to save time only, and report it
(the result's ``crafted_on`` says which projection was attacked; evaluation records carry it). Every
attack keeps, per sample, the first iterate the attacked model misclassifies. On a model that is not a
``DefendedModel``, ``BPDA``, ``ImplicitPGD`` and
``UnrolledPGD`` are plain PGD.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from manifold_defense.attacks.base import Attack, Crafted, FirstSuccess, on_rows
from manifold_defense.attacks.pixel import ProjectedGradientDescent, margin, project_to_ball
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.inversion import descend
from manifold_defense.inversion.result import pick_best
from manifold_defense.validation import InputError, check_compatible

__all__ = ["BPDA", "BackwardPassDifferentiableApproximation", "ImplicitPGD", "UnrolledPGD", "SurrogateTransfer",
           "LatentReparameterization", "LatentReparam", "margin_loss", "crafting_model", "describe_projection",
           "same_function", "range_starts", "nearest_other_class"]


def _copy_with(obj, **changes):
    """A shallow copy of ``obj`` with some attributes changed."""
    out = copy.copy(obj)
    out.__dict__.update(changes)
    return out


margin_loss = margin  # the Carlini–Wagner margin, under its older name


def crafting_model(model: nn.Module, projection: ProjectionConfig | None = None, *, gradient: str = "bpda",
                   stochastic: bool = False) -> nn.Module:
    """The model an adaptive attack differentiates: for a ``DefendedModel``, the same classifier and
    generator behind ``projection`` (default: its own), with the given gradient mode and, if asked,
    fresh random restarts per call; any other model is returned as it is."""
    if not isinstance(model, DefendedModel):
        return model
    cfg = projection or model.projection
    if stochastic:
        cfg = replace(cfg, stochastic=True)
    return model.variant(projection=cfg, gradient=gradient)


def nearest_other_class(generator: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float,
                        norm: str, k: int, *, pool: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents (n, k, d), images (n, k, …))``: per sample, the ``k`` of ``pool`` seeded prior samples that the
    classifier labels other than ``y`` and that lie nearest to ``x`` (ℓ2 distance; for ℓ∞ the squared part of
    the per-pixel differences beyond ``radius``)."""
    device = x.device
    with torch.no_grad():
        z = generator.sample_latent(pool, torch.Generator().manual_seed(seed), device=torch.device("cpu")).to(device)
        images = torch.cat([generator(c) for c in z.split(500)])
        labels = torch.cat([classifier(c).argmax(1) for c in images.split(500)])
        xf, cost = x.flatten(1), []
        for c in images.flatten(1).split(256):
            if norm == "l2":
                cost.append(torch.cdist(xf, c))
            else:
                cost.append((xf[:, None] - c[None]).abs().sub(radius).clamp_min(0).pow(2).sum(-1))
        cost = torch.cat(cost, 1)
        cost = torch.where(labels[None] == y[:, None].to(labels.device), torch.full_like(cost, float("inf")), cost)
        idx = cost.topk(min(k, pool), dim=1, largest=False).indices
        return z[idx], images[idx]


def range_starts(generator: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                 norm: str, k: int, *, pool: int = 4000, seed: int = 0) -> torch.Tensor:
    """``(n, k, …)`` starting points for an attack on a projection defense: per sample, the ``k`` images of the
    generator's range nearest to ``x`` that the classifier labels differently (``nearest_other_class``,
    radius ε), each projected onto the ε-ball around ``x``. A projection defense returns the nearest point of
    its range, so an input moved towards another class's part of the range is where its answer flips;
    gradient steps from there finish the job. ``pool`` seeded prior samples."""
    _, targets = nearest_other_class(generator, classifier, x, y, epsilon, norm, k, pool=pool, seed=seed)
    with torch.no_grad():
        xr = x[:, None].expand_as(targets)
        return (xr + project_to_ball((targets - xr).flatten(0, 1), epsilon, norm).view_as(targets)).clamp(0, 1)


def same_function(model: nn.Module, craft: nn.Module) -> bool:
    """Whether ``craft``'s forward pass is exactly ``model``'s (so its logits can judge success): the same
    module, or a BPDA/implicit variant of a deterministic defended model behind the same projection."""
    if craft is model:
        return True
    if isinstance(model, DefendedModel) and isinstance(craft, DefendedModel):
        return (craft.classifier is model.classifier and craft.generator is model.generator
                and craft.projection == model.projection and not model.projection.stochastic
                and craft.gradient in ("bpda", "implicit", "none"))
    return False


def describe_projection(model: nn.Module, crafted_on: nn.Module) -> str:
    """Which projection an attack crafted on, for reports."""
    if not isinstance(model, DefendedModel):
        return "no projection (undefended model)"
    cfg = crafted_on.projection if isinstance(crafted_on, DefendedModel) else model.projection
    same = "the attacked model's own projection" if cfg == model.projection else "a surrogate projection"
    grad = getattr(crafted_on, "gradient", "bpda")
    return (f"{same} ({grad} gradient): steps={cfg.steps}, restarts={cfg.restarts}, optimizer={cfg.optimizer}, init={cfg.init}, "
            f"stochastic={cfg.stochastic}, dead_zone={cfg.dead_zone}")


class BackwardPassDifferentiableApproximation(Attack):
    """PGD with BPDA gradients (+ EOT) against a projection defense (Athalye et al. 2018, §4.1 and §4.3).

    Each step differentiates ``classifier(G(ẑ(x)))`` with the projection replaced by the identity on the
    backward pass. With ``eot`` > 1 the crafting projection is made stochastic (fresh random restarts
    per forward) and the gradient is averaged over ``eot`` draws. ``projection`` selects a surrogate
    projection for crafting (default: the attacked model's own). ``range_restarts`` > 0 adds that many
    restarts from the ε-ball's nearest points to other classes' parts of the generator's range
    (``range_starts``) — on a projection defense far stronger than random starts. Every iterate is
    scored on the attacked model (``check_every`` = k: every k-th step, for a costly model behind a cheap
    surrogate; with ``warm_steps`` = m > 0 the steps in between craft on m-step projections warm-started at the
    previous ``ẑ``, see ``ProjectedGradientDescent``). Keyword arguments
    of PGD otherwise (``loss='margin'`` for the Carlini–Wagner margin).
    """

    def __init__(self, *, norm: str = "linf", steps: int = 40, rel_stepsize: float | None = None,
                 random_start: bool = True, restarts: int = 1, eot: int = 1, seed: int = 0,
                 projection: ProjectionConfig | None = None, loss: str = "ce", range_restarts: int = 0,
                 range_pool: int = 4000, check_every: int = 1, warm_steps: int = 0) -> None:
        if range_restarts < 0 or range_pool < 1:
            raise InputError(f"range_restarts must be >= 0 and range_pool >= 1, got {range_restarts}, {range_pool}")
        self.pgd = ProjectedGradientDescent(norm=norm, steps=steps, rel_stepsize=rel_stepsize,
                                            random_start=random_start, restarts=restarts, eot=eot, seed=seed, loss=loss,
                                            check_every=check_every, warm_steps=warm_steps)
        self.norm, self.eot, self.projection = norm, eot, projection
        self.range_restarts, self.range_pool = range_restarts, range_pool

    def crafting_model(self, model: nn.Module) -> nn.Module:
        """The model whose gradients the attack follows (see ``crafting_model``)."""
        return crafting_model(model, self.projection, gradient="bpda", stochastic=self.eot > 1)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
            extra_starts: torch.Tensor | None = None) -> Crafted:
        """PGD on the crafting model's gradients; success checked on ``model`` (see the module docstring).
        ``extra_starts`` ``(n, K, …)``: more restarts from these points of the ε-ball (after the range restarts)."""
        craft = self.crafting_model(model)
        pgd = self.pgd
        # one draw is the expectation where the crafting model is known to be deterministic (a DefendedModel
        # with a deterministic projection, e.g. its implicit gradient): more draws would repeat it, at their
        # cost. Any other model may be randomised (a user's random-transform defense): it keeps its draws.
        deterministic = isinstance(craft, DefendedModel) and not craft.projection.stochastic
        if deterministic and pgd.eot > 1:
            pgd = _copy_with(pgd, eot=1)
        extra = None
        if self.range_restarts and isinstance(model, DefendedModel):
            extra = range_starts(model.generator, model.classifier, x, y.to(x.device), epsilon, self.norm,
                                 self.range_restarts, pool=self.range_pool, seed=self.pgd.seed)
        if extra_starts is not None:
            extra = extra_starts if extra is None else torch.cat([extra, extra_starts.to(extra)], 1)
        found = pgd.run(craft, x, y, epsilon, scorer=None if same_function(model, craft) else model, extra_starts=extra)
        found.crafted_on = describe_projection(model, craft)
        return found


class SurrogateTransfer(Attack):
    """``attack`` (a ``BPDA`` / ``ImplicitPGD`` with a surrogate ``projection``) run *entirely* on the
    surrogate — its own logits decide when a sample is done, no query of the attacked model during the search —
    and its inputs scored once on the attacked model: a transfer from the cheap projection to the costly one.

    Behind a projection far costlier than its surrogate (Defense-GAN's 2,000 generator passes per input against
    the default's ~70) this is the cheap strong first attack of a cascade: one costly projection per sample
    instead of one every few steps. Nothing the search saw counts as a success: only the attacked model's
    answer to the returned inputs does."""

    def __init__(self, attack: BackwardPassDifferentiableApproximation) -> None:
        if attack.projection is None:
            raise InputError("SurrogateTransfer needs an attack with a surrogate projection= (else it is the attack "
                             "itself)")
        self.attack, self.norm = attack, attack.norm

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """The attack on the surrogate alone; no ``reached`` (a surrogate's verdict is never a success)."""
        if not isinstance(model, DefendedModel):
            raise InputError("SurrogateTransfer attacks a DefendedModel (its surrogate is another projection of it)")
        surrogate = model.variant(projection=self.attack.projection, gradient="bpda")
        found = self.attack.run(surrogate, x, y, epsilon)  # the surrogate is the "attacked" model of the search
        return Crafted(found.adversarial, crafted_on=f"{describe_projection(model, surrogate)}, transferred (the "
                                                     "attacked model was asked once, for the returned inputs)")


class ImplicitPGD(BackwardPassDifferentiableApproximation):
    """PGD with the implicit derivative of the projection (``DefendedModel(gradient="implicit")``): at the
    converged projection ``ẑ(x)`` the gradient of ``classifier(G(ẑ(x)))`` is exact up to the projection's
    convergence (Amos & Kolter 2017; Blondel et al. 2022). A deterministic projection needs no EOT; a
    stochastic one gets ``eot`` draws like ``BPDA``. Keyword arguments of PGD otherwise.
    """

    def crafting_model(self, model: nn.Module) -> nn.Module:
        """The attacked model behind the same projection with the implicit gradient."""
        stochastic = isinstance(model, DefendedModel) and model.projection.stochastic
        return crafting_model(model, self.projection, gradient="implicit", stochastic=stochastic and self.eot > 1)


class UnrolledPGD(BackwardPassDifferentiableApproximation):
    """PGD through the unrolled projection: gradients flow through ``unroll_steps`` optimisation steps of
    the projection (and its encoder start), no approximation (Athalye et al. 2018, end-to-end attack on a
    short projection). The crafting projection is the attacked one truncated to ``unroll_steps`` steps
    without early stopping, unless ``projection`` is given.
    """

    def __init__(self, *, unroll_steps: int = 20, **kwargs) -> None:
        if unroll_steps < 1:
            raise InputError(f"unroll_steps must be >= 1, got {unroll_steps}")
        super().__init__(**kwargs)
        self.unroll_steps = unroll_steps

    def crafting_model(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, DefendedModel):
            return model
        cfg = self.projection or replace(model.projection, steps=self.unroll_steps, tol=0.0)
        return crafting_model(model, cfg, gradient="unrolled", stochastic=self.eot > 1)


class LatentReparameterization(Attack):
    """Latent reparameterisation attack (Athalye et al. 2018, §5.3.1 on Defense-GAN).

    Starting from the projection ``ẑ(x)`` (``restarts`` perturbed copies in the batch), minimise
    ``max(margin(C(G(z)), y), −κ) + c · Σ excess²`` where the excess is how far ``G(z)`` lies outside the
    ε-ball around ``x`` (ℓ2 or ℓ∞; a slack keeps the target a little inside); ``c`` grows ×10 over
    ``rounds`` (a penalty method). The returned input is ``x + Π_ε(G(z) − x)``, which equals ``G(z)``
    whenever the search ended inside the ball. On a ``DefendedModel`` the generator and classifier
    are the model's own, and the loop differentiates the classifier at ``G(z)`` (the projection of a
    point on the range is that point); success is scored on the full defended model.
    """

    def __init__(self, generator: nn.Module | None = None, *, norm: str = "l2", steps: int = 200, lr: float = 0.05,
                 restarts: int = 4, rounds: int = 3, penalty: float = 1.0, kappa: float = 2.0,
                 slack: float = 0.97, init_scale: float = 0.3, projection: ProjectionConfig | None = None,
                 seed: int = 0, check_every: int = 1) -> None:
        if check_every < 1:
            raise InputError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        if norm not in ("linf", "l2"):
            raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if steps < 1 or restarts < 1 or rounds < 1 or lr <= 0 or penalty <= 0 or not 0 < slack <= 1:
            raise InputError("steps, restarts, rounds >= 1; lr, penalty > 0; slack in (0, 1]")
        self.generator, self.norm, self.steps, self.lr = generator, norm, steps, lr
        self.restarts, self.rounds, self.penalty, self.kappa = restarts, rounds, penalty, kappa
        self.slack, self.init_scale, self.projection, self.seed = slack, init_scale, projection, seed

    def _parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module, ProjectionConfig]:
        if isinstance(model, DefendedModel):
            return model.generator, model.classifier, self.projection or model.projection
        if self.generator is None:
            raise InputError("LatentReparameterization needs a generator: attack a DefendedModel or pass generator=")
        check_compatible(self.generator, model)
        return self.generator, model, self.projection or ProjectionConfig.for_generator(self.generator)

    def _excess(self, d: torch.Tensor, epsilon: float) -> torch.Tensor:
        """Per-sample squared amount by which perturbations ``d`` leave the (slackened) ε-ball."""
        r = self.slack * epsilon
        if self.norm == "l2":
            return torch.relu(d.flatten(1).norm(dim=1) - r).pow(2)
        return torch.relu(d.abs() - r).pow(2).flatten(1).sum(1)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Search the latent space near the projection; a sample's first input the attacked model misclassifies
        is kept (checked on ``model`` where the classifier at ``G(z)`` is already fooled); a sample's restarts
        stop once one of them broke it."""
        generator, classifier, cfg = self._parts(model)
        n, R = len(x), self.restarts
        y = y.to(x.device)
        z_hat = cfg.project(generator, x).z
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((n, R, z_hat.shape[1]), generator=gen, dtype=z_hat.dtype).to(z_hat.device)
        noise[:, 0] = 0  # restart 0 starts exactly at the projection
        z = (z_hat[:, None] + self.init_scale * noise).reshape(n * R, -1)
        x_rep, y_rep = x.repeat_interleave(R, 0), y.repeat_interleave(R, 0)

        def adversarial(img: torch.Tensor, zz: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return (x_rep[rows] + project_to_ball(img - x_rep[rows], epsilon, self.norm)).clamp(0, 1)

        check = FirstSuccess(model, y_rep, prefilter=True, transform=adversarial, check_every=self.check_every,
                             groups=torch.arange(n * R, device=x.device) // R)

        def margin(img: torch.Tensor, zz: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logits = classifier(img)
            check.record(logits)
            return margin_loss(logits, y_rep[rows], self.kappa)

        broken = torch.zeros(n * R, dtype=torch.bool, device=x.device)
        for r in range(self.rounds):  # a penalty method: the weight on leaving the ball grows ×10 per round
            c = self.penalty * 10**r
            todo = (~broken).nonzero().squeeze(1)
            if todo.numel() == 0:
                break

            def excess(img: torch.Tensor, zz: torch.Tensor, rows: torch.Tensor, c: float = c) -> torch.Tensor:
                return c * self._excess(img - x_rep[rows], epsilon)

            sub = on_rows(todo)
            res = descend(z[todo], generator, sub(margin), penalties=[sub(excess)], steps=self.steps, lr=self.lr,
                          step_rule="adam", until=sub(check), desc="latent-reparam")
            z[todo] = res.variables.detach()
            broken[todo] = check.hit_rows[todo]
            broken |= check.broken_groups.repeat_interleave(R)  # a sample broken by one restart needs no more rounds
        with torch.no_grad():
            img = generator(z)
            adv = adversarial(img, z, torch.arange(n * R, device=x.device))
            m = margin_loss(classifier(adv), y_rep)
            inside = self._excess(img - x_rep, epsilon / self.slack) == 0
        # Per sample: a restart that broke the attacked model; else the one inside the ball with the lowest margin.
        big = m.abs().max() + 1
        hits = check.hit_rows
        score = torch.where(hits, -2 * big, m + (~inside).to(m.dtype) * big)
        _, idx = pick_best(score, n, R)
        return Crafted(adv[idx], crafted_on=f"latent search started at the projection ({cfg.steps} steps, "
                                            f"{cfg.restarts} restarts)")


BPDA = BackwardPassDifferentiableApproximation
LatentReparam = LatentReparameterization
