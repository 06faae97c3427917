"""Attack interface: small classes with keyword-only hyperparameters and one typed entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from manifold_defense.validation import InputError, check_images, check_labels, model_dtype
from manifold_defense.utils import evaluation_mode

__all__ = ["Attack", "AttackResult", "Crafted", "TransferAttack", "perturbation_norm", "predict_labels", "labels_of",
           "FirstSuccess", "on_rows", "is_deterministic"]


@dataclass
class Crafted:
    """What ``Attack.run`` returns: everything the search found, so nothing travels in attributes.

    ``adversarial``: the inputs. ``reference``: the centre of the ε-ball where it is not ``x`` (on the manifold,
    the projection ``G(ẑ(x))``). ``norms``: per-sample budget norms where the budget is not an image norm (a
    latent ball). ``reached``: per sample, whether the search itself saw the *attacked* model misclassify exactly
    the input returned (kept on a deterministic model even if a re-evaluation in another batch shape rounds the
    other way). ``crafted_on``: which model or projection the search differentiated, for reports.
    """

    adversarial: torch.Tensor
    reference: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    reached: torch.Tensor | None = None
    crafted_on: str = ""


def as_crafted(out: "Crafted | torch.Tensor | tuple") -> Crafted:
    """A ``Crafted`` from what ``run`` returned: itself, adversarial inputs alone, or the tuple
    ``(adversarial, reference[, norms])`` of attacks written before ``Crafted``."""
    if isinstance(out, Crafted):
        return out
    if isinstance(out, torch.Tensor):
        return Crafted(out)
    if isinstance(out, tuple) and 1 <= len(out) <= 3:
        return Crafted(*out)
    raise TypeError(f"Attack.run must return a Crafted, a tensor or (adversarial, reference[, norms]), got {type(out)}")


@dataclass
class AttackResult:
    """Adversarial inputs, per-sample success (the model's prediction differs from the label), the
    perturbation norm actually used, in the attack's norm, and which model the search crafted on."""

    adversarial: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    epsilon: float
    norm: str
    crafted_on: str = ""

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean())

    @property
    def robust_accuracy(self) -> float:
        return 1.0 - self.success_rate


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ℓ∞ or ℓ2 norm of a batch of perturbations."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes of ``logits``; a row with a non-finite logit gets -1 (wrong for every label: a model
    that answers NaN is broken, never "correct" because NaN's argmax happened to be the label)."""
    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), torch.full_like(logits[:, 0], -1,
                                                                                          dtype=torch.long))


def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted class per input (one forward pass, no gradients; -1 for non-finite logits)."""
    with torch.no_grad():
        return labels_of(model(x))


class FirstSuccess:
    """The engine's ``until``: a row stops, keeping its iterate, as soon as the *attacked* model misclassifies it.

    ``scorer`` is the attacked model; ``transform(x, v, rows)`` maps the engine's decoded images (and
    variables) to the input the attacked model sees. With ``reuse`` the logits come from the objective's own
    forward pass (record them with ``record``): only when that forward *is* the attacked model (the same
    deterministic function). Otherwise the scorer runs on every unbroken row at every call; ``prefilter``
    with ``check_every`` = k > 1 (for a scorer far costlier than the crafting model, e.g. Defense-GAN's
    projection behind a fast surrogate) checks every row only every k-th call and, in between, the rows the
    cheap logits (recorded by the objective) already get wrong. Success is never judged on a surrogate.
    ``hit_rows`` holds every row the scorer found misclassified. ``groups`` (row → sample, for restarts
    carried in the batch): once one row of a sample is misclassified, its other rows stop too (they are
    returned as met, so the engine stops spending on them, but they are not in ``hit_rows``, and they
    are never scored): a broken sample costs nothing more. With ``reuse`` and ``prefilter`` both, the objective
    says per call whether its logits are the attacked model's (``record(logits, exact=True)``) or a cheaper
    model's (a warm-started crafting projection, ``exact=False``): those only pick the rows the scorer checks.
    """

    def __init__(self, scorer: nn.Module, labels: torch.Tensor, *, reuse: bool = False, prefilter: bool = False,
                 transform: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 check_every: int = 1, groups: torch.Tensor | None = None) -> None:
        if check_every < 1:
            raise InputError(f"check_every must be >= 1, got {check_every}")
        if groups is not None and groups.shape != labels.shape:
            raise InputError(f"groups must give one sample per row ({tuple(labels.shape)}), got {tuple(groups.shape)}")
        self.scorer, self.labels, self.reuse, self.prefilter = scorer, labels, reuse, prefilter
        self.transform, self.check_every, self.calls = transform, check_every, 0
        self.logits: torch.Tensor | None = None
        self.exact = reuse
        self.hit_rows = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        self.groups = None if groups is None else groups.to(labels.device)
        self.broken_groups = (None if groups is None else
                              torch.zeros(int(groups.max()) + 1 if len(groups) else 0, dtype=torch.bool,
                                          device=labels.device))

    def record(self, logits: torch.Tensor, *, exact: bool | None = None) -> None:
        """Keep the objective's logits of the rows just evaluated; ``exact``: whether they are the attacked
        model's own (default: ``reuse``). Only a ``reuse`` check can take logits as exact."""
        if exact and not self.reuse:
            raise InputError("logits can be exact only for a check that reuses the objective's forward (reuse=True)")
        self.logits = logits.detach()
        self.exact = self.reuse if exact is None else exact

    def __call__(self, x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        y = self.labels[rows]
        self.calls += 1
        settled = (torch.zeros(len(rows), dtype=torch.bool, device=y.device) if self.groups is None
                   else self.broken_groups[self.groups[rows]])  # another row of the sample broke it already
        if self.reuse and self.exact:
            hit = (labels_of(self.logits[: len(rows)]) != y) & ~settled
        else:
            candidate = ~settled
            # between the k-th calls (with a reusing check: whenever the logits are not the scorer's, since the
            # objective itself asks the attacked model every k-th call) only rows the cheap logits get wrong
            cheap = self.reuse or self.calls % self.check_every != 0
            if self.prefilter and self.logits is not None and cheap:
                candidate &= labels_of(self.logits[: len(rows)]) != y
            hit = torch.zeros_like(candidate)
            if bool(candidate.any()):
                inputs = x if self.transform is None else self.transform(x, v, rows)
                with torch.no_grad():
                    hit[candidate] = labels_of(self.scorer(inputs[candidate])) != y[candidate]
        self.hit_rows[rows[hit]] = True
        if self.groups is None:
            return hit
        self.broken_groups[self.groups[rows[hit]]] = True
        return hit | settled


def is_deterministic(model: nn.Module) -> bool:
    """Whether ``model`` answers an input the same way every time (not a stochastic projection defense)."""
    projection = getattr(model, "projection", None)
    return not bool(getattr(projection, "stochastic", False))


def on_rows(subset: torch.Tensor) -> Callable:
    """Adapt a term (or ``until``) written for a whole batch to a descent over ``subset`` of its rows: the
    engine's row indices are positions in ``subset``; the term sees the batch's own rows."""
    def wrap(fn: Callable) -> Callable:
        return lambda img, v, rows: fn(img, v, subset[rows])
    return wrap


class Attack:
    """Base class. Subclasses set ``norm`` and implement ``run(model, x, y, epsilon) →`` ``Crafted`` (or
    the adversarial inputs alone). Attacks are stateless: what a search found comes back in its result.

    ``attack(model, x, y, epsilon=ε)`` validates the inputs, runs the attack, checks that every
    perturbation is within ε (an attack that overshoots is a bug, so it raises), and reports success
    from one forward pass of the model on the adversarial inputs.
    """

    norm: str = "linf"
    #: a minimisation attack (C&W, HopSkipJump) finds each sample's smallest adversarial perturbation once;
    #: ``sweep`` then clips it to every ε instead of rerunning the attack per ε
    minimization: bool = False
    #: bumped when the attack's behaviour or scoring changes in a way its hyperparameters do not show; part of
    #: the records' fingerprint when > 0 (``manifold_defense.eval.records.attack_fingerprint``), so records
    #: made before the change are refused rather than mixed with new ones
    revision: int = 0

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted | torch.Tensor:
        """The attack itself on validated inputs (``Crafted``); ``__call__`` checks the budget and
        scores them."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float) -> AttackResult:
        if not epsilon >= 0:
            raise InputError(f"epsilon must be >= 0, got {epsilon}")
        check_images(x, getattr(model, "input_shape", None), dtype=model_dtype(model))
        check_labels(y, len(x), getattr(model, "num_classes", None))
        with evaluation_mode(model):  # crafted and scored in eval mode; each submodule's own mode comes back after
            return self._crafted_and_scored(model, x, y, float(epsilon))

    def _crafted_and_scored(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> AttackResult:
        found = as_crafted(self.run(model, x.detach(), y, epsilon))
        # On-manifold attacks measure ε around a reference point (the projection G(ẑ(x))), not x; a latent-space
        # budget is measured by the attack itself, in latent space (its per-sample norms).
        adv = found.adversarial.detach()
        ref = x if found.reference is None else found.reference.detach()
        if not bool(torch.isfinite(adv).all()):
            raise AssertionError(f"{type(self).__name__} produced non-finite adversarial inputs")
        norms = found.norms.detach() if found.norms is not None else perturbation_norm(adv - ref, self.norm)
        tol = 1e-5 * max(1.0, epsilon)
        if bool((norms > epsilon + tol).any()) or float(adv.min()) < -1e-6 or float(adv.max()) > 1 + 1e-6:
            raise AssertionError(f"{type(self).__name__} produced a perturbation of {self.norm} norm "
                                 f"{float(norms.max()):.4g} > ε = {epsilon} or left [0, 1]")
        success = predict_labels(model, adv) != y.to(adv.device)
        # The search's own verdict on the attacked model, for the very inputs returned: a deterministic model
        # that misclassified them once is broken even if a re-evaluation in another batch shape rounds the
        # other way (logits differ by ~1e-6 across batch shapes).
        if found.reached is not None and is_deterministic(model):
            success = success | found.reached.to(success.device)
        return AttackResult(adversarial=adv, success=success.cpu(), norms=norms.cpu(), epsilon=float(epsilon),
                            norm=self.norm, crafted_on=found.crafted_on)

    def sweep(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float]
              ) -> dict[float, AttackResult]:
        """The attack at every ε. A bounded attack runs once per ε; a minimisation attack runs once, at the
        largest ε, and its adversarial inputs are clipped to each smaller ε (each scored by a forward pass)."""
        epsilons = sorted(float(e) for e in epsilons)
        if not self.minimization or len(epsilons) == 1:
            return {e: self(model, x, y, epsilon=e) for e in epsilons}
        top = self(model, x, y, epsilon=epsilons[-1])
        out = {epsilons[-1]: top}
        clipped = _Clipped(self.norm, top.adversarial.to(x.device))
        for e in epsilons[:-1]:
            out[e] = clipped(model, x, y, epsilon=e)
        return out


class _Clipped(Attack):
    """Another attack's adversarial inputs projected onto a smaller ε-ball (no new search)."""

    def __init__(self, norm: str, adversarial: torch.Tensor) -> None:
        self.norm, self.adversarial = norm, adversarial

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        """``x + Π_ε(adversarial − x)``."""
        from manifold_defense.inversion.constraints import project_lp_ball

        return (x + project_lp_ball(self.adversarial - x, epsilon, self.norm)).clamp(0, 1)


class TransferAttack(Attack):
    """Craft adversarial inputs with ``attack`` on ``source`` and score them on the attacked model
    (the non-adaptive protocol of Defense-GAN's paper: FGSM on the undefended classifier, fed to the defense)."""

    def __init__(self, source: nn.Module, attack: Attack) -> None:
        self.source, self.attack, self.norm = source, attack, attack.norm

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        self.source.eval()
        return Crafted(as_crafted(self.attack.run(self.source, x, y, epsilon)).adversarial,
                       crafted_on="the undefended source classifier (transfer)")
