"""The descent engine: the one optimisation loop of the library.

    v̂ = argmin_v  data(decode(v), v) + Σ penalty(decode(v), v)       (per row of a batch)

Projection and compressed sensing (``decode`` = a generator, ``v`` = latents), ILO (``decode`` = the
tail of a generator, ``v`` = an intermediate code in an ℓ1 ball), the Deep Image Prior (``decode`` =
an untrained network, ``v`` = its weights), guided generation, and every attack and training
adversary (``decode`` = the identity or a generator, the data term a negated classification loss,
the step rule a sign or normalised step) are calls of ``descend`` with other arguments.

Rows are independent problems (samples × restarts × candidates): each has its own optimiser state,
learning rate and stopping; a row that has converged (``tol``/``patience``), reached ``stop_at`` or
met ``until`` stops costing evaluations. The loop is written out rather than taken from
``torch.optim`` because per-row early stopping needs per-row optimiser state updated on a shrinking
subset of rows, and unrolling (``differentiable=True``) needs out-of-place updates; ``torch.optim``
does neither.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from manifold_defense.validation import InputError

__all__ = ["Descent", "descend", "StepRule", "Adam", "Momentum", "GradientDescent", "SignStep", "NormalizedStep",
           "get_step_rule", "STEP_RULES", "schedule_factor", "Term"]

#: ``term(x, v, rows) → (len(rows),)``: a per-row loss of decoded images ``x`` and variables ``v``;
#: ``rows`` are the rows' indices in the whole batch (to look up per-row targets).
Term = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Descent:
    """What ``descend`` returns, one entry per row.

    ``variables``: the kept iterate (the best by objective; the first that met ``until`` for rows that
    did; the last with ``keep='last'``). ``objective`` and ``data``: the objective and its data term at
    the kept iterate (NaN where it was not evaluated: ``keep='last'``). ``history``: ``(steps, B)`` best
    objective after each step. ``evaluations``: objective evaluations per row (a forward with its
    backward counts once; ``eot`` draws count each). ``diverged``: the objective or its gradient became
    non-finite (the row keeps its last finite iterate). ``stopped_at``: steps a row took before it
    stopped (``steps`` if it ran to the end). ``reached``: the row stopped at ``stop_at`` or ``until``.
    """

    variables: torch.Tensor
    objective: torch.Tensor
    data: torch.Tensor
    history: torch.Tensor
    evaluations: torch.Tensor
    diverged: torch.Tensor
    stopped_at: torch.Tensor
    reached: torch.Tensor


# ------------------------------------------------------------------------------------- step rules


class StepRule:
    """How a row moves given its gradient: ``update(v, g, lr, state, t, rows=…) → (new v, new state)``.

    ``state`` holds the rule's per-row tensors (restricted to the active rows; the engine stores them
    back), ``lr`` is ``(A, 1, …)``, ``t`` the step count (from 1; the same for every active row, which all
    started together) and ``rows`` the rows' indices in the batch. Subclass it to plug in another rule (the engine's ``get_step_rule`` hook, as foolbox's
    ``get_optimizer``).
    """

    name = "rule"
    state_names: tuple[str, ...] = ()

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor],
               t: int, *, rows: torch.Tensor, differentiable: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step of the active rows ``v`` along (minus) their gradients ``g``."""
        raise NotImplementedError


class GradientDescent(StepRule):
    """``v − lr · g`` (the subgradient method of Hand & Voroninski 2018)."""

    name = "gd"

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        return v - lr * g, state


class Momentum(StepRule):
    """Heavy-ball SGD: ``m ← μ m + g``, ``v − lr · m`` (Defense-GAN's projection)."""

    name = "sgd"
    state_names = ("m",)

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0 <= momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        m = self.momentum * state["m"] + g
        return v - lr * m, {"m": m}


class Adam(StepRule):
    """Adam (Kingma & Ba 2015) with bias correction, per row."""

    name = "adam"
    state_names = ("m", "s")

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        m = self.beta1 * state["m"] + (1 - self.beta1) * g
        s = self.beta2 * state["s"] + (1 - self.beta2) * g * g
        # bias corrections as Python floats: the same arithmetic for every row, whatever the batch
        mhat, shat = m / (1 - self.beta1**t), s / (1 - self.beta2**t)
        # sqrt has an infinite derivative at 0: the unrolled loop smooths it (a 1e-16 shift).
        denom = (shat + self.eps**2).sqrt() if differentiable else shat.sqrt() + self.eps
        return v - lr * mhat / denom, {"m": m, "s": s}


class SignStep(StepRule):
    """ℓ∞ steepest descent, ``v − lr · sign(g)`` (FGSM / ℓ∞ PGD, Madry et al. 2018)."""

    name = "sign"

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        return v - lr * g.sign(), state


class NormalizedStep(StepRule):
    """ℓ2 steepest descent, ``v − lr · g / ‖g‖₂`` per row (ℓ2 PGD; latent PGD of Stutz et al. 2019)."""

    name = "l2"

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
        return v - lr * g / norm, state


STEP_RULES: dict[str, Callable[..., StepRule]] = {
    "adam": Adam, "sgd": Momentum, "gd": GradientDescent, "sign": SignStep, "l2": NormalizedStep,
}


def get_step_rule(rule: str | StepRule, **kwargs) -> StepRule:
    """A step rule by name (``adam``, ``sgd`` (``momentum=``), ``gd``, ``sign``, ``l2``), or ``rule`` itself."""
    if isinstance(rule, StepRule):
        return rule
    if rule not in STEP_RULES:
        raise InputError(f"unknown step rule {rule!r}; use one of {', '.join(STEP_RULES)} or a StepRule")
    return STEP_RULES[rule](**kwargs)


# -------------------------------------------------------------------------------------- schedules


def schedule_factor(kind: str | Callable[[int, int], float], steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: 'constant', 'cosine', 'step' (×0.1 at 80 % of the steps, as
    Defense-GAN), 'ramp' (ILO/StyleGAN practice: linear ramp-up over 5 %, cosine ramp-down over the
    last 25 %) or a callable ``(t, steps) → factor``."""
    if callable(kind):
        return lambda t: float(kind(t, steps))
    if kind == "constant":
        return lambda t: 1.0
    if kind == "cosine":
        return lambda t: 0.5 * (1 + math.cos(math.pi * t / steps))
    if kind == "step":
        return lambda t: 0.1 if t >= 0.8 * steps else 1.0
    if kind == "ramp":
        def f(t: int) -> float:
            p = t / max(1, steps)
            up = min(1.0, p / 0.05)
            down = 0.5 * (1 - math.cos(math.pi * min(1.0, (1 - p) / 0.25)))
            return up * down
        return f
    raise InputError(f"unknown learning-rate schedule {kind!r}; use constant, cosine, step, ramp or a callable")


# ----------------------------------------------------------------------------------------- the loop


class _Rows:
    """Per-row tensors written in place, or out of place when the loop is unrolled (the graph through
    earlier iterates must survive)."""

    def __init__(self, differentiable: bool) -> None:
        self.differentiable = differentiable

    def put(self, t: torch.Tensor, rows: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            return t.index_copy(0, rows, val.to(t.dtype))
        t[rows] = val
        return t


def descend(
    start: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    data: Term,
    *,
    penalties: Sequence[Term] = (),
    steps: int,
    lr: float | torch.Tensor,
    step_rule: str | StepRule = "adam",
    schedule: str | Callable[[int, int], float] = "constant",
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    negation: bool = False,
    tol: float = 0.0,
    patience: int = 100,
    stop_at: float | torch.Tensor | None = None,
    until: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    keep: str = "best",
    eot: int = 1,
    differentiable: bool = False,
    min_rows: int = 1,
    progress: bool = False,
    desc: str = "descend",
) -> Descent:
    """Minimise ``data + Σ penalties`` over each row of ``start`` by ``steps`` first-order steps.

    ``decode(v)`` maps variables to images; every term is called as ``term(x, v, rows)`` and returns
    one value per row. ``step_rule``: 'adam', 'sgd' (heavy ball, momentum 0.9), 'gd', 'sign', 'l2' or
    a ``StepRule``; ``lr`` a number or one per row, scaled by ``schedule``. ``project(v, rows)``
    maps each updated row back to its feasible set (an ℓp ball, the box [0, 1] …): projected descent.
    ``negation`` tries ``−v`` before every step and keeps it when its objective is lower (Hand &
    Voroninski 2018).

    Stopping, per row: after ``patience`` steps whose objective improved by less than a relative
    ``tol`` (``tol`` > 0); once the data term is at most ``stop_at`` (a number or one per row —
    Morozov's discrepancy principle when it is the noise energy, the early stopping of the Deep Image
    Prior); or once ``until(x, v, rows)`` (evaluated on every scored iterate, without gradients) is
    true — then that very iterate is kept, whatever its objective (an attack keeps its first success).

    ``keep='best'`` returns each row's lowest-objective iterate, the last iterate included (one more
    evaluation for rows that ran to the end); ``keep='last'`` the final iterate, unevaluated.
    ``eot`` > 1 averages the objective and its gradient over that many evaluations per step
    (Expectation over Transformation, Athalye et al. 2018, for randomised objectives).
    ``differentiable=True`` unrolls the loop: updates are out of place and gradients are taken with
    ``create_graph``, so the result is a differentiable function of whatever ``start`` and the terms
    depend on (no early stopping then; memory grows with ``steps``). ``min_rows`` pads every evaluation
    (decode and terms) to at least that many rows (as ``rows_at_least``), so
    each row's arithmetic — and therefore its whole descent — is the same whatever else is in the batch.
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if eot < 1:
        raise InputError(f"eot must be >= 1, got {eot}")
    if keep not in ("best", "last"):
        raise InputError(f"keep must be 'best' or 'last', got {keep!r}")
    rule = get_step_rule(step_rule)
    with torch.enable_grad() if differentiable else contextlib.nullcontext():
        return _loop(start, decode, data, tuple(penalties), steps=steps, lr=lr, rule=rule, schedule=schedule,
                     project=project, negation=negation, tol=0.0 if differentiable else tol, patience=patience,
                     stop_at=stop_at, until=until, keep=keep, eot=eot, differentiable=differentiable,
                     min_rows=min_rows, progress=progress, desc=desc)


def _loop(var, decode, data, penalties, *, steps, lr, rule, schedule, project, negation, tol, patience, stop_at,
          until, keep, eot, differentiable, min_rows, progress, desc) -> Descent:
    B, device, dtype = var.shape[0], var.device, var.dtype
    rows_io = _Rows(differentiable)
    put = rows_io.put
    var = var.clone() if differentiable else var.detach().clone()
    no_grad = contextlib.nullcontext if differentiable else torch.no_grad
    shape = (-1, *([1] * (var.dim() - 1)))

    def evaluate(v: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(v)
        if n < min_rows:  # the whole evaluation on at least min_rows rows: a row's arithmetic is then batch-free
            v = torch.cat([v, v[-1:].expand(min_rows - n, *v.shape[1:])])
            rows = torch.cat([rows, rows[-1:].expand(min_rows - n)])
        x = decode(v)
        d = data(x, v, rows)
        f = d
        for term in penalties:
            f = f + term(x, v, rows)
        return f[:n], d[:n], x[:n]

    lr_rows = torch.as_tensor(lr, dtype=dtype, device=device).expand(B).clone().view(shape)
    state = {k: torch.zeros_like(var) for k in rule.state_names}
    best_var = var.clone()
    best = torch.full((B,), math.inf, device=device, dtype=dtype)
    best_data = torch.full((B,), math.nan, device=device, dtype=dtype)
    stall = torch.zeros(B, dtype=torch.long, device=device)
    evals = torch.zeros(B, dtype=torch.long, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    reached_rows = torch.zeros(B, dtype=torch.bool, device=device)
    stopped_at = torch.full((B,), steps, dtype=torch.long, device=device)
    history = torch.empty(steps, B, dtype=dtype, device=device)
    active = torch.arange(B, device=device)
    factor = schedule_factor(schedule, steps)
    floor = None if stop_at is None else torch.as_tensor(stop_at, dtype=dtype, device=device).expand(B)

    def check_until(x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, f: torch.Tensor, d: torch.Tensor
                    ) -> torch.Tensor:
        """Rows meeting ``until`` keep this iterate and stop (returns the mask, all False without ``until``)."""
        if until is None:
            return torch.zeros(len(rows), dtype=torch.bool, device=device)
        with torch.no_grad():  # a success counts even where the objective or its gradient is not finite
            usable = torch.isfinite(v.detach()).flatten(1).all(1)
            hit = until(x.detach(), v.detach(), rows).to(torch.bool) & usable & ~reached_rows[rows]
        if bool(hit.any()):
            nonlocal best_var
            r = rows[hit]
            best_var = put(best_var, r, v[hit])
            best[r], best_data[r] = f[hit], d[hit]
            reached_rows[r] = True
        return hit

    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if active.numel() == 0:
            history[step:] = best
            break
        v = var[active]
        if negation:
            with no_grad():
                both = torch.cat([v, -v])
                f2, _, _ = evaluate(both, torch.cat([active, active]))
                flip = f2.detach()[len(v):] < f2.detach()[: len(v)]
            evals[active] += 1
            v = torch.where(flip.view(shape), -v, v)
        if not differentiable:
            v = v.detach()
        if not v.requires_grad:
            v = v.requires_grad_(True)
        grad = f = d = None
        for _ in range(eot):
            with torch.enable_grad():
                fi, di, x = evaluate(v, active)
                (gi,) = torch.autograd.grad(fi.sum(), v, create_graph=differentiable)
            grad = gi if grad is None else grad + gi
            f = fi.detach() if f is None else f + fi.detach()
            d = di.detach() if d is None else d + di.detach()
        grad, f, d = grad / eot, f / eot, d / eot
        evals[active] += eot
        if not differentiable:
            v = v.detach()
        finite = torch.isfinite(f) & torch.isfinite(grad.detach().flatten(1)).all(1)
        if not bool(finite.all()):
            diverged[active[~finite]] = True
        reached = None if floor is None else d <= floor[active]
        hit = check_until(x, v, active, f, d)
        # Track the best iterate (objective at v, before this step's update); rows that met ``until`` keep theirs.
        better = finite & (f < best[active]) & ~reached_rows[active]
        if bool(better.any()):
            rows = active[better]
            improved_enough = f[better] < best[rows] - tol * best[rows].abs()
            best_var = put(best_var, rows, v[better])
            best[rows], best_data[rows] = f[better], d[better]
            stall[rows] = torch.where(improved_enough, 0, stall[rows] + 1)
        stall[active[~better]] += 1
        history[step] = best
        # The step, on the active rows.
        g = torch.where(finite.view(shape), grad, torch.zeros_like(grad))
        new, new_state = rule.update(v, g, lr_rows[active] * factor(step), {k: s[active] for k, s in state.items()},
                                     step + 1, rows=active, differentiable=differentiable)
        for k, s in new_state.items():
            state[k] = put(state[k], active, s)
        if project is not None:
            new = project(new, active)
        new = torch.where(finite.view(shape), new, best_var[active])  # diverged rows keep their best finite iterate
        var = put(var, active, new)
        done = hit if reached is None else hit | reached
        go_on = (finite & (stall[active] < patience) if tol > 0 else finite) & ~done
        stopped_at[active[~go_on]] = step + 1
        reached_rows[active[done]] = True
        active = active[go_on]
        if progress and step % 20 == 0:
            bar.set_postfix(active=int(active.numel()), loss=f"{float(best[best.isfinite()].mean()):.4g}")

    if keep == "last":  # the final iterate; rows that met ``until`` keep the iterate that met it
        nan = torch.full((B,), math.nan, device=device, dtype=dtype)
        shape_b = (-1, *([1] * (var.dim() - 1)))
        last = torch.where(reached_rows.view(shape_b), best_var, var) if until is not None else var
        return Descent(last, nan, nan.clone(), history, evals, diverged, stopped_at, reached_rows)
    # Score the last iterate of rows that ran to the end: it may beat the best seen so far.
    if active.numel() > 0 and steps > 0:
        with no_grad():
            v = var[active]
            f, d, x = evaluate(v, active)
            f, d = f.detach(), d.detach()
        evals[active] += 1
        finite = torch.isfinite(f)
        hit = check_until(x, v, active, f, d)
        better = finite & (f < best[active]) & ~hit & ~reached_rows[active]
        rows = active[better]
        best_var = put(best_var, rows, v[better])
        best[rows], best_data[rows] = f[better], d[better]
        history[-1] = best
    if steps == 0:
        with no_grad():
            all_rows = torch.arange(B, device=device)
            best, best_data, x = evaluate(var, all_rows)
            best, best_data = best.detach(), best_data.detach()
            check_until(x, var, all_rows, best, best_data)
        evals += 1
    return Descent(best_var, best, best_data, history, evals, diverged, stopped_at, reached_rows)
