"""An ℓ∞ attack on a projection defense through the projection's own loss, not its gradient.

- ``RangeTargetAttack`` — other-class points of the generator's range that the projection's loss can
  reach from the ε-ball, and per pixel the input that makes such a point fit better than the true class's
  projections. For projections whose loss masks gradients (ILO's dead zone); on a smooth projection the
  implicit-gradient attack (``ImplicitPGD``) is the stronger one.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_defense.attacks.adaptive import ImplicitPGD, describe_projection, nearest_other_class
from manifold_defense.attacks.base import Attack, Crafted, labels_of
from manifold_defense.attacks.pixel import margin
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.inversion import descend, projection_residual
from manifold_defense.validation import InputError, check_compatible

__all__ = ["RangeTargetAttack", "RangeTarget", "RangeTargetPGD"]


class RangeTargetAttack(Attack):
    """ℓ∞ attack on a projection defense through its own per-pixel loss ρ (squared error, or ILO's dead zone:
    ``ρ(r) = max(|r| − τ, 0)²``, Daras et al. 2021): make a point of another class's part of the range the
    projection's best fit.

    A projection returns the range point of lowest loss, so an input is broken once some other-class point
    ``G(z')`` fits it better than every point of the true class. Per sample: ``restarts`` targets, the prior
    samples of another label whose loss can vanish within the ball (``|G(z') − x| ≤ ε + τ`` per pixel, the
    excess squared as cost), refined in latent space by ``steps`` Adam steps on that excess plus the
    classifier's margin (the target must stay another class). Then, per pixel and separately (ρ is a sum
    over pixels), the value in ``[x − ε, x + ε] ∩ [0, 1]`` minimising ``weight · ρ(G(z') − v) − mean_a ρ(a − v)``
    over the true class's *anchors* ``a`` (a 49-point grid, exact up to its spacing): the target fits, the
    true class is pushed away. Each of ``rounds`` rounds scores all inputs on the attacked model and adds, as
    anchors, the true-class projections it returned. A dead zone of width ≥ ε makes the projection constant
    under most ℓ∞ perturbations (its implicit derivative vanishes, BPDA's points elsewhere): this attack
    needs no gradient of the projection, and is where such a defense is attacked as Tramèr et al. (2020,
    "On Adaptive Attacks to Adversarial Example Defenses") ask — through the defense's own objective.
    Success is scored on the attacked model; each sample keeps its first breaking input. On a smooth
    (squared-error) projection ``ImplicitPGD`` is the stronger attack; without a projection (``generator=``
    given, any classifier) the projection is the identity and the targets' own class is the classifier's.
    """

    norm = "linf"

    def __init__(self, generator: nn.Module | None = None, *, restarts: int = 16, steps: int = 100, rounds: int = 3,
                 weight: float = 10.0,
                 lr: float = 0.05, pool: int = 4000, kappa: float = 2.0, grid: int = 49, batch_size: int = 256,
                 seed: int = 0) -> None:
        if restarts < 1 or steps < 0 or rounds < 1 or pool < 1 or grid < 2 or batch_size < 1:
            raise InputError("RangeTargetAttack needs restarts, rounds, pool, batch_size >= 1, steps >= 0, grid >= 2")
        if not weight > 1 or not lr > 0 or not kappa > 0:
            raise InputError(f"weight must be > 1 (the target's fit outweighs the push away), lr and kappa > 0; "
                             f"got {weight}, {lr}, {kappa}")
        self.generator = generator
        self.restarts, self.steps, self.rounds, self.weight, self.lr = restarts, steps, rounds, weight, lr
        self.pool, self.kappa, self.grid, self.batch_size, self.seed = pool, kappa, grid, batch_size, seed

    def _targets(self, gen: nn.Module, clf: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, tau: float
                 ) -> torch.Tensor:
        """``(n · restarts, latent)``: per sample, the other-label prior samples of least excess, refined."""
        k = min(self.restarts, self.pool)
        z, _ = nearest_other_class(gen, clf, x, y, epsilon + tau, "linf", k, pool=self.pool, seed=self.seed)
        start = z.flatten(0, 1).to(x.dtype)
        x_rep, y_rep = x.repeat_interleave(k, 0), y.repeat_interleave(k, 0)

        def other_class(img: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return margin(clf(img), y_rep[rows], self.kappa)

        def excess(img: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.weight * (img - x_rep[rows]).abs().sub(epsilon + tau).clamp_min(0).pow(2).flatten(1).sum(1)

        if self.steps == 0:
            return start
        res = descend(start, gen, other_class, penalties=[excess], steps=self.steps, lr=self.lr, step_rule="adam",
                      desc="range-targets")
        return res.variables.detach()

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Targets, then ``rounds`` of per-pixel inputs scored on ``model``; a sample's first breaking input."""
        adv, broken, last, _ = self.search(model, x, y, epsilon)
        # per sample: its first breaking input (lowest target index), else the last round's first target
        n = len(x)
        any_hit = broken.any(1)
        pick = torch.where(any_hit, broken.float().argmax(1), torch.zeros_like(any_hit, dtype=torch.long))
        rows = torch.arange(n, device=x.device)
        out = torch.where(any_hit.view(n, *([1] * (x.dim() - 1))), adv[rows, pick], last[rows, pick])
        return Crafted(out, reached=any_hit, crafted_on=self.describe(model))

    def describe(self, model: nn.Module) -> str:
        """What the search went through, for reports."""
        k = min(self.restarts, self.pool)
        if isinstance(model, DefendedModel):
            return (f"the attacked model's own projection loss (dead_zone={float(model.projection.dead_zone)}): {k} "
                    f"range targets per sample, {self.rounds} rounds, no gradient of the projection")
        return f"no projection (the identity): {k} range targets per sample, {self.rounds} rounds"

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per (sample, target), shapes ``(n, restarts, …)``: the first input that broke ``model``, whether one did,
        the last round's input, and ``model``'s margin there (``inf`` where the sample was broken before it)."""
        defended = isinstance(model, DefendedModel)
        if not defended and self.generator is None:
            raise InputError("RangeTargetAttack needs a generator: attack a DefendedModel or pass generator=")
        if not defended:
            check_compatible(self.generator, model)
        gen, clf = (model.generator, model.classifier) if defended else (self.generator, model)
        tau, n, k = float(model.projection.dead_zone) if defended else 0.0, len(x), min(self.restarts, self.pool)
        y = y.to(x.device)
        shape = (n, k, *x.shape[1:])

        def rho(r: torch.Tensor) -> torch.Tensor:
            return projection_residual(r, tau)

        def answer(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The attacked model's logits and the range point its projection chose (the input itself without one)."""
            if not defended:
                return model(inputs), inputs
            logits, projected = model.classify(inputs)
            return logits, projected.x.to(x.dtype)

        with torch.no_grad():  # the true class's fit to x (its projection, paid once per evaluation with a cache)
            anchors = [(model.project(x).x.to(x.dtype) if defended else x)[:, None].expand(shape)]
        targets = self._targets(gen, clf, x, y, epsilon, tau)
        lift = (n, k) + (1,) * (x.dim() - 1)
        adv = x[:, None].expand(shape).clone()  # per (sample, target): its first breaking input
        broken = torch.zeros(n, k, dtype=torch.bool, device=x.device)
        margins = torch.full((n, k), float("inf"), device=x.device)
        with torch.no_grad():
            target_img = gen(targets).view(shape)
            lo, hi = (x - epsilon).clamp(0, 1)[:, None], (x + epsilon).clamp(0, 1)[:, None]
            for _ in range(self.rounds):
                best, best_obj = adv.clone(), torch.full(shape, float("inf"), device=x.device, dtype=x.dtype)
                for t in torch.linspace(0, 1, self.grid, device=x.device, dtype=x.dtype):
                    v = lo + t * (hi - lo)
                    obj = self.weight * rho(target_img - v) - sum(rho(a - v) for a in anchors) / len(anchors)
                    better = obj < best_obj
                    best, best_obj = torch.where(better, v, best), torch.where(better, obj, best_obj)
                todo = (~broken.any(1)).nonzero().squeeze(1)  # samples not broken yet: all their targets
                if todo.numel() == 0:
                    break
                logits, fits = [], []
                for c in best[todo].flatten(0, 1).split(self.batch_size):
                    out, fit = answer(c)
                    logits.append(out)
                    fits.append(fit)
                logits, y_rep = torch.cat(logits), y[todo].repeat_interleave(k)
                hit = labels_of(logits).view(len(todo), k) != y[todo, None]
                margins[todo] = margin(logits.float(), y_rep).view(len(todo), k)
                fit = torch.cat(fits).view(len(todo), *shape[1:])
                adv[todo] = torch.where(hit.view(len(todo), *lift[1:]), best[todo], adv[todo])
                broken[todo] = hit
                # next round, the mean of the true-class points these inputs were projected to is pushed away
                # from too (for every target of the sample: one image that all its true-class fits resemble)
                w = (~hit).to(x.dtype).view(len(todo), *lift[1:])
                nxt = anchors[0].clone()
                nxt[todo] = ((w * fit).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)).expand_as(fit)
                anchors.append(nxt)
                last = best
        margins[broken.any(1)] = float("inf")  # broken samples' margins are no longer of use
        return adv, broken, last, margins


class RangeTargetPGD(Attack):
    """``RangeTargetAttack``, then ``ImplicitPGD`` (margin loss) on the samples it left unbroken, started
    also from its ``target_starts`` inputs of lowest margin on the attacked model (besides PGD's own random and
    range restarts).

    One attack as strong as the two together. On a defense where each breaks inputs the other misses (a dead-zone
    projection: the range targets go through its own loss, PGD follows a smooth ``projection``'s gradient), the
    strongest *single* attack is what Carlini et al. (2019, "On Evaluating Adversarial Robustness") double to
    see whether more budget still helps: doubling this one doubles both parts (targets, latent steps, PGD steps,
    restarts, and ``target_starts``). ``projection``: the (surrogate) projection PGD differentiates (default:
    the attacked model's own); success is always scored on the attacked model.
    """

    norm = "linf"

    def __init__(self, generator: nn.Module | None = None, *, targets: int = 16, latent_steps: int = 100,
                 rounds: int = 3, steps: int = 100, restarts: int = 2, range_restarts: int = 8, target_starts: int = 8,
                 projection: ProjectionConfig | None = None, check_every: int = 1, seed: int = 0) -> None:
        if target_starts < 0:
            raise InputError(f"target_starts must be >= 0, got {target_starts}")
        self.range_target = RangeTargetAttack(generator, restarts=targets, steps=latent_steps, rounds=rounds, seed=seed)
        self.pgd = ImplicitPGD(norm="linf", steps=steps, restarts=restarts, projection=projection, loss="margin",
                               range_restarts=range_restarts, check_every=check_every, seed=seed)
        self.target_starts = target_starts

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """Range targets first; PGD on what they left, from their closest calls too."""
        adv, broken, last, margins = self.range_target.search(model, x, y, epsilon)
        n, y = len(x), y.to(x.device)
        rows, hit = torch.arange(n, device=x.device), broken.any(1)
        out, reached = adv[rows, broken.float().argmax(1)].clone(), hit.clone()
        todo = (~hit).nonzero().squeeze(1)
        pgd_on = describe_projection(model, self.pgd.crafting_model(model))
        if todo.numel():
            k = min(self.target_starts, margins.shape[1])
            order = margins[todo].argsort(1)[:, :k]
            starts = last[todo][torch.arange(len(todo), device=x.device)[:, None], order] if k else None
            found = self.pgd.run(model, x[todo], y[todo], epsilon, extra_starts=starts)
            out[todo] = found.adversarial.to(out)
            reached[todo] = found.reached.to(reached.device)
        return Crafted(out, reached=reached, crafted_on=f"{self.range_target.describe(model)}; then implicit PGD from "
                                                        f"{self.target_starts} of their inputs on {pgd_on}")


RangeTarget = RangeTargetAttack
