"""The inversion core: find a latent (or intermediate) code whose generated image explains measurements.

    ẑ = argmin_z  loss(A(G(z)), y) + λ‖z‖²

Used by the defense (A = identity), by compressed sensing and other inverse problems, and by
classifier-guided generation (A = a classifier, loss = cross-entropy to a target class).

Methods, all on one descent loop (:func:`_descend`):

- :func:`csgm` — Bora, Jalal, Price, Dimakis, "Compressed Sensing using Generative Models", ICML 2017.
  Restarts ride in the batch dimension; the best restart per sample is kept.
- :func:`ilo` — Daras, Dean, Jalal, Dimakis, "Intermediate Layer Optimization for Inverse Problems
  using Deep Generative Models", ICML 2021: CSGM, then the inputs of successively deeper layers,
  each within an ℓ1 ball (projection of Duchi et al. 2008) around the previous solution's image.
  Radii are picked automatically per sample by cross-validation on held-out measurements.
- :func:`subgradient` — Hand & Voroninski 2018; Huang et al.: gradient descent on
  ½‖A G(z) − y‖² with the negation step (try −z whenever it has the lower objective).
- :func:`dip` — Ulyanov et al., "Deep Image Prior", CVPR 2018; Van Veen et al., "Compressed Sensing
  with Deep Image Prior and Learned Regularization", 2018: the same loop over the weights of an
  untrained network (one per sample, batched with ``torch.func.vmap``), its input fixed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_defense.operators import Identity, Operator
from manifold_defense.validation import InputError

__all__ = [
    "InversionResult",
    "invert",
    "csgm",
    "ilo",
    "subgradient",
    "dip",
    "fit_dip_prior",
    "DIPWeightPrior",
    "total_variation",
    "project_l1_ball",
    "dead_zone_loss",
    "DivergenceWarning",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DivergenceWarning(RuntimeWarning):
    """Some samples' objective became non-finite; they keep their last finite iterate and are flagged."""


@dataclass
class InversionResult:
    """What an inversion returns (one row per input sample).

    ``z``: the kept latent code (for ILO, the first-stage latent). ``x``: the reconstruction.
    ``loss``: the final objective of the kept solution. ``history``: ``(steps, N)`` objective per step
    (best restart so far). ``generator_evals``: per-sample number of generator passes used (all
    restarts and stages; a forward with its backward counts once; passes shared by a batch, like a
    latent search, count their share). ``restart``: index of the kept
    restart. ``diverged``: samples whose objective became non-finite at some point (they keep their
    last finite iterate). ``info``: method-specific extras (ILO radii, chosen layers ...).
    """

    z: torch.Tensor
    x: torch.Tensor
    loss: torch.Tensor
    history: torch.Tensor
    generator_evals: torch.Tensor
    restart: torch.Tensor
    diverged: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def evals_per_sample(self) -> float:
        return float(self.generator_evals.float().mean())


# --------------------------------------------------------------------------------------------- helpers


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the ℓ1 ball of (per-row) ``radius``.

    Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient projections onto the ℓ1-ball", ICML 2008:
    sort |v|, find the threshold θ from cumulative sums, soft-threshold. Batched, O(d log d) per row.
    """
    flat = v.flatten(1)
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(flat.shape[0]).clamp_min(0)
    a = flat.abs()
    inside = a.sum(1) <= r
    mu = a.sort(dim=1, descending=True).values
    cums = mu.cumsum(1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = mu - (cums - r[:, None]) / ks > 0
    rho = cond.to(flat.dtype).mul(ks).argmax(1)  # last index where cond holds
    theta = ((cums.gather(1, rho[:, None]).squeeze(1) - r) / (rho + 1).to(flat.dtype)).clamp_min(0)
    out = flat.sign() * (a - theta[:, None]).clamp_min(0)
    out = torch.where(inside[:, None], flat, out)
    return out.view_as(v)


def _schedule(kind: str | Callable[[int, int], float], steps: int) -> Callable[[int], float]:
    if callable(kind):
        return lambda t: float(kind(t, steps))
    if kind == "constant":
        return lambda t: 1.0
    if kind == "cosine":
        return lambda t: 0.5 * (1 + math.cos(math.pi * t / steps))
    if kind == "step":  # Defense-GAN: ×0.1 at 80 % of the steps
        return lambda t: 0.1 if t >= 0.8 * steps else 1.0
    if kind == "ramp":  # ILO/StyleGAN practice: linear ramp-up over 5 %, cosine ramp-down over the last 25 %
        def f(t: int) -> float:
            p = t / max(1, steps)
            up = min(1.0, p / 0.05)
            down = 0.5 * (1 - math.cos(math.pi * min(1.0, (1 - p) / 0.25)))
            return up * down
        return f
    raise InputError(f"unknown learning-rate schedule {kind!r}; use constant, cosine, step, ramp or a callable")


def _per_sample_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss == "mse":  # mean over measurement entries (Bora et al.)
        return lambda pred, y: (pred - y).pow(2).flatten(1).mean(1)
    if loss == "sum":  # ‖A G(z) − y‖²: with A ~ N(0, 1/m) this equals CSGM's mean loss under its A ~ N(0, 1)
        return lambda pred, y: (pred - y).pow(2).flatten(1).sum(1)
    if loss == "sse":  # ½‖A G(z) − y‖² (Hand & Voroninski)
        return lambda pred, y: 0.5 * (pred - y).pow(2).flatten(1).sum(1)
    raise InputError(f"unknown loss {loss!r}; use 'mse', 'sum', 'sse' or a callable (pred, y) -> per-sample loss")


def dead_zone_loss(tau: float) -> LossFn:
    """Mean over entries of ``max(|pred − y| − τ, 0)²``: residuals up to τ cost nothing.

    The dead-zone term of ILO's public code (Daras et al. 2021): a projection with this loss ignores
    bounded per-entry noise such as an ℓ∞ perturbation of size ≤ τ. ``τ = 0`` is the mean squared error.
    """
    if not tau >= 0:
        raise InputError(f"dead-zone width must be >= 0, got {tau}")
    return lambda pred, y: torch.relu((pred - y).abs() - tau).pow(2).flatten(1).mean(1)


def _device_dtype(generator: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(generator.parameters())
    return p.device, p.dtype


def _check_problem(generator: nn.Module, y: torch.Tensor, operator: Operator | None, loss: str | LossFn) -> Operator:
    if not hasattr(generator, "latent_dim") or not hasattr(generator, "output_shape"):
        raise InputError(f"{type(generator).__name__} is not a manifold_defense Generator (needs latent_dim, "
                         "output_shape)")
    return _check_operator(generator.output_shape, y, operator, loss, "the generator")


def _check_operator(shape, y: torch.Tensor, operator: Operator | None, loss: str | LossFn, maker: str) -> Operator:
    """The operator (default identity) takes images of ``shape``; ``y`` are valid measurements for it."""
    operator = operator if operator is not None else Identity(shape)
    if tuple(operator.in_shape) != tuple(shape):
        raise InputError(f"operator expects images of shape {operator.in_shape} but {maker} makes {tuple(shape)}")
    if isinstance(loss, str):
        operator.check_measurements(y)
    else:
        if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] == 0:
            raise InputError("y must be a non-empty batch tensor")
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            raise InputError("y contains NaN or inf values; the inversion would return garbage")
    return operator


# ------------------------------------------------------------------------------------------ the loop


def _descend(
    var: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    objective: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float | torch.Tensor,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str | Callable[[int, int], float] = "constant",
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    negation: bool = False,
    tol: float = 0.0,
    patience: int = 100,
    progress: bool = False,
    desc: str = "invert",
    differentiable: bool = False,
    stop_at: float | torch.Tensor | None = None,
    stop_value: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one optimisation loop of the library.

    ``var``: ``(B, ...)`` starting points (samples × restarts × candidates all in the batch).
    ``objective(x, v, rows)`` returns the per-row objective of decoded images ``x = decode(v)``.
    Rows whose objective has improved by less than a relative ``tol`` for ``patience`` steps stop
    (per-sample early stopping): later steps only touch the still-active rows, so converged samples
    cost no generator evaluations. ``stop_at`` (a number or one per row) also stops a row as soon as its
    objective is at or below it (Morozov's discrepancy principle when it is the noise energy: the
    early stopping of the Deep Image Prior); ``stop_value()``, if given, is compared instead of the
    objective (called right after the objective, it returns that call's per-row data term). The best iterate of each row is returned, with its objective,
    the ``(steps, B)`` history, per-row evaluation counts and a per-row divergence flag.

    ``differentiable=True`` unrolls the loop: every update is out of place and gradients are taken
    with ``create_graph``, so the returned iterate is a differentiable function of whatever the
    starting points and the objective depend on (end-to-end attacks through a short projection,
    Athalye et al. 2018). No early stopping then (``tol`` is ignored); memory grows with ``steps``.

    The optimiser (Adam, heavy-ball SGD, or plain gradient descent) is written out here rather than
    taken from ``torch.optim`` because early stopping needs per-row optimiser state updated on a
    shrinking subset of rows, and unrolling needs out-of-place updates; ``torch.optim`` does neither.
    """
    with torch.enable_grad() if differentiable else contextlib.nullcontext():
        return _descend_loop(var, decode, objective, steps=steps, lr=lr, optimizer=optimizer, momentum=momentum,
                             schedule=schedule, project=project, negation=negation, tol=0.0 if differentiable else tol,
                             patience=patience, progress=progress, desc=desc, differentiable=differentiable,
                             stop_at=stop_at, stop_value=stop_value)


def _descend_loop(var, decode, objective, *, steps, lr, optimizer, momentum, schedule, project, negation, tol,
                  patience, progress, desc, differentiable, stop_at=None, stop_value=None):
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if optimizer not in ("adam", "sgd", "gd"):
        raise InputError(f"optimizer must be 'adam', 'sgd' or 'gd', got {optimizer!r}")
    B = var.shape[0]
    device = var.device
    var = var.clone() if differentiable else var.detach().clone()

    def put(t: torch.Tensor, rows: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        if differentiable:  # out of place, so the graph through earlier iterates survives
            return t.index_copy(0, rows, val.to(t.dtype))
        t[rows] = val
        return t

    no_grad = contextlib.nullcontext if differentiable else torch.no_grad
    lr_rows = torch.as_tensor(lr, dtype=var.dtype, device=device).expand(B).clone()
    lr_rows = lr_rows.view(B, *([1] * (var.dim() - 1)))
    m1 = torch.zeros_like(var)
    m2 = torch.zeros_like(var) if optimizer == "adam" else None
    t_row = torch.zeros(B, device=device)
    best_var = var.clone()
    best = torch.full((B,), math.inf, device=device, dtype=var.dtype)
    stall = torch.zeros(B, dtype=torch.long, device=device)
    evals = torch.zeros(B, dtype=torch.long, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    history = torch.empty(steps, B, dtype=var.dtype, device=device)
    active = torch.arange(B, device=device)
    factor = _schedule(schedule, steps)
    beta1, beta2, eps = (0.9, 0.999, 1e-8)
    floor = None if stop_at is None else torch.as_tensor(stop_at, dtype=var.dtype, device=device).expand(B)

    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if active.numel() == 0:
            history[step:] = best
            break
        v = var[active]
        if negation:
            with no_grad():
                both = torch.cat([v, -v])
                f = objective(decode(both), both, torch.cat([active, active])).detach()
                flip = f[len(v):] < f[: len(v)]
            evals[active] += 1
            v = torch.where(flip.view(-1, *([1] * (v.dim() - 1))), -v, v)
        if not differentiable:
            v = v.detach()
        if not v.requires_grad:
            v = v.requires_grad_(True)
        with torch.enable_grad():
            f = objective(decode(v), v, active)
            reached = None if floor is None else (stop_value() if stop_value else f).detach() <= floor[active]
            (grad,) = torch.autograd.grad(f.sum(), v, create_graph=differentiable)
        evals[active] += 1
        f = f.detach()
        if not differentiable:
            v = v.detach()
        finite = torch.isfinite(f) & torch.isfinite(grad.detach().flatten(1)).all(1)
        if not bool(finite.all()):
            diverged[active[~finite]] = True
        # Track the best iterate (objective at v, before this step's update).
        better = finite & (f < best[active])
        if bool(better.any()):
            rows = active[better]
            improved_enough = f[better] < best[rows] - tol * best[rows].abs()
            best_var = put(best_var, rows, v[better])
            best[rows] = f[better]
            stall[rows] = torch.where(improved_enough, 0, stall[rows] + 1)
        stall[active[~better]] += 1
        history[step] = best
        # Optimiser step on the active rows.
        t_row[active] += 1
        shape = (-1, *([1] * (v.dim() - 1)))
        g = torch.where(finite.view(shape), grad, torch.zeros_like(grad))
        a_lr = lr_rows[active] * factor(step)
        if optimizer == "adam":
            m1 = put(m1, active, beta1 * m1[active] + (1 - beta1) * g)
            m2 = put(m2, active, beta2 * m2[active] + (1 - beta2) * g * g)  # type: ignore[index,arg-type]
            tt = t_row[active].view(shape)
            mhat = m1[active] / (1 - beta1**tt)
            vhat = m2[active] / (1 - beta2**tt)  # type: ignore[index]
            # sqrt has an infinite derivative at 0: the unrolled loop smooths it (a 1e-16 shift).
            denom = (vhat + eps**2).sqrt() if differentiable else vhat.sqrt() + eps
            new = v - a_lr * mhat / denom
        elif optimizer == "sgd":
            m1 = put(m1, active, momentum * m1[active] + g)
            new = v - a_lr * m1[active]
        else:
            new = v - a_lr * g
        if project is not None:
            new = project(new, active)
        # Diverged rows keep their best finite iterate and stop.
        new = torch.where(finite.view(shape), new, best_var[active])
        var = put(var, active, new)
        keep = finite & (stall[active] < patience) if tol > 0 else finite
        if reached is not None:
            keep = keep & ~reached
        active = active[keep]
        if progress and step % 20 == 0:
            bar.set_postfix(active=int(active.numel()), loss=f"{float(best[best.isfinite()].mean()):.4g}")

    # Evaluate the last iterate of rows that ran to the end: it may beat the best seen so far.
    if active.numel() > 0 and steps > 0:
        with no_grad():
            v = var[active]
            f = objective(decode(v), v, active).detach()
        evals[active] += 1
        better = torch.isfinite(f) & (f < best[active])
        rows = active[better]
        best_var = put(best_var, rows, v[better])
        best[rows] = f[better]
        history[-1] = best
    if steps == 0:
        with torch.no_grad():
            best = objective(decode(var), var, torch.arange(B, device=device))
        evals += 1
    return best_var, best, history, evals, diverged


# ----------------------------------------------------------------------------------------- methods


def _init_latents(
    generator: nn.Module,
    y: torch.Tensor,
    operator: Operator,
    restarts: int,
    init: str | torch.Tensor,
    init_scale: float,
    gen: torch.Generator,
    differentiable: bool = False,
) -> torch.Tensor:
    device, dtype = _device_dtype(generator)
    n, k = y.shape[0], generator.latent_dim
    noise = torch.randn(n, restarts, k, generator=gen, dtype=dtype).to(device) * init_scale
    if isinstance(init, torch.Tensor):
        if tuple(init.shape) not in ((n, k), (n, restarts, k)):
            raise InputError(f"init latents must have shape ({n}, {k}) or ({n}, {restarts}, {k}), got "
                             f"{tuple(init.shape)}")
        if init.dim() == 3:
            return init.to(device, dtype).reshape(n * restarts, k)
        z0 = init.to(device, dtype)[:, None].expand(n, restarts, k).clone()
        z0[:, 1:] += noise[:, 1:]
        return z0.reshape(n * restarts, k)
    if init == "random":
        return noise.reshape(n * restarts, k)
    if init == "encoder":
        if not getattr(generator, "has_encoder", False):
            raise InputError(f"init='encoder' needs a generator with an encoder; {type(generator).__name__} has none")
        if isinstance(operator, Identity):
            x0 = y
        elif operator.linear:
            x0 = operator.adjoint(y).clamp(0, 1)  # a crude back-projection; restarts cover the rest
        else:
            raise InputError("init='encoder' needs a linear operator")
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            z_enc = generator.encode(x0.to(dtype))
        z0 = z_enc[:, None].expand(n, restarts, k).clone()
        z0[:, 1:] += noise[:, 1:]  # restart 0 is the encoder's code, the others perturb it
        return z0.reshape(n * restarts, k)
    raise InputError(f"init must be 'random', 'encoder', 'search' or a tensor of latents, got {init!r}")


#: Losses that are a fixed multiple of ‖pred − y‖²: the search ranks candidates with one matrix product.
_QUADRATIC_SCALE = {"mse": None, "sum": 1.0, "sse": 0.5}


def _search_starts(
    generator: nn.Module,
    operator: Operator,
    y: torch.Tensor,
    loss: str | LossFn,
    prior_weight: float,
    restarts: int,
    candidates: int,
    init_scale: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """The ``restarts`` best of ``candidates`` random latents per sample by the objective (forward passes
    only, candidates shared by all samples, computed in chunks so memory stays bounded). Returns
    ``(n, restarts, k)``. For the squared-error losses the scores come from
    ``‖y‖² + ‖p‖² − 2 y·p`` (one matrix product per chunk) instead of an ``n × candidates`` difference."""
    device, dtype = _device_dtype(generator)
    n, k = y.shape[0], generator.latent_dim
    if candidates < restarts:
        raise InputError(f"search_candidates ({candidates}) must be >= restarts ({restarts})")
    zc = (torch.randn(candidates, k, generator=gen, dtype=dtype) * init_scale).to(device)
    scores = torch.empty(n, candidates, device=device, dtype=dtype)
    quadratic = isinstance(loss, str) and loss in _QUADRATIC_SCALE
    lossfn = None if quadratic else _per_sample_loss(loss)
    yf = y.flatten(1)
    with torch.no_grad():
        for c0 in range(0, candidates, 512):
            pc = operator(generator(zc[c0 : c0 + 512]))
            c = len(pc)
            if quadratic:
                pf = pc.flatten(1)
                scale = _QUADRATIC_SCALE[loss] or 1.0 / pf.shape[1]  # type: ignore[index]
                d = yf.pow(2).sum(1)[:, None] + pf.pow(2).sum(1)[None] - 2 * yf @ pf.T
                scores[:, c0 : c0 + c] = scale * d.clamp_min(0)
            else:
                step = max(1, int(2e7 // max(1, c * pc[0].numel())))
                for i0 in range(0, n, step):
                    yy = y[i0 : i0 + step]
                    P = pc[None].expand(len(yy), *pc.shape).flatten(0, 1)
                    Y = yy[:, None].expand(len(yy), c, *yy.shape[1:]).flatten(0, 1)
                    scores[i0 : i0 + len(yy), c0 : c0 + c] = lossfn(P, Y).view(len(yy), c)  # type: ignore[misc]
            if prior_weight:
                scores[:, c0 : c0 + c] += prior_weight * zc[c0 : c0 + c].pow(2).sum(1)
    top = scores.topk(restarts, dim=1, largest=False).indices
    return zc[top]


def _pick_best(values: torch.Tensor, n: int, restarts: int) -> tuple[torch.Tensor, torch.Tensor]:
    per = values.view(n, restarts)
    per = torch.where(torch.isfinite(per), per, torch.full_like(per, math.inf))
    best = per.argmin(1)
    return best, torch.arange(n, device=values.device) * restarts + best


def csgm(
    generator: nn.Module,
    y: torch.Tensor,
    operator: Operator | None = None,
    *,
    prior_weight: float = 0.0,
    restarts: int = 1,
    steps: int = 1000,
    lr: float = 0.01,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str | Callable[[int, int], float] = "constant",
    init: str | torch.Tensor = "random",
    init_scale: float = 1.0,
    loss: str | LossFn = "mse",
    tol: float = 0.0,
    patience: int = 100,
    seed: int = 0,
    progress: bool = False,
    weights: torch.Tensor | None = None,
    negation: bool = False,
    differentiable: bool = False,
    search_candidates: int = 1000,
    prune_after: int = 0,
) -> InversionResult:
    """CSGM (Bora et al. 2017): ``argmin_z loss(A(G(z)), y) + λ‖z‖²`` by gradient descent from ``restarts``
    starting points per sample, all in one batch; the restart with the lowest objective is kept.

    ``loss`` is 'mse' (mean over measurement entries), 'sum' (‖A G(z) − y‖²), 'sse' (½ sum) or any callable
    ``(A(G(z)), y) → per-sample loss`` (e.g. cross-entropy to target classes for guidance).
    ``tol``/``patience`` enable per-sample early stopping. ``weights`` (same shape as ``y``, 0/1)
    restricts the loss to some measurement entries. ``negation`` tries ``−z`` before every step
    (see :func:`subgradient`). ``differentiable=True`` keeps the graph from ``y`` (and the encoder
    start) to the result, for attacks that backpropagate through the unrolled inversion.
    ``init`` is 'random', 'encoder', 'search' (the ``restarts`` best of ``search_candidates`` random
    latents by the objective, forward passes only), 'encoder+search' (restart 0 at the encoder's code,
    the others at the best search candidates) or a tensor of latents. The search's forward passes are
    shared by the batch and count ``search_candidates / n`` towards each sample's ``generator_evals``.
    ``prune_after`` > 0: after that many steps (constant learning rate) only each sample's best restart
    continues, for the remaining ``steps − prune_after`` steps under ``schedule`` (successive halving
    down to one restart: all restarts explore, one converges); 0 or ≥ ``steps`` never prunes.
    """
    operator = _check_problem(generator, y, operator, loss)
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    if prior_weight < 0:
        raise InputError(f"prior_weight must be >= 0, got {prior_weight}")
    device, dtype = _device_dtype(generator)
    y = y.to(device)
    if y.is_floating_point():
        y = y.to(dtype)
    n = y.shape[0]
    if prune_after < 0:
        raise InputError(f"prune_after must be >= 0 (0 or >= steps: never prune), got {prune_after}")
    gen = torch.Generator().manual_seed(seed)
    search_evals = 0.0
    if isinstance(init, str) and init in ("search", "encoder+search"):
        n_enc = int(init == "encoder+search")
        k = generator.latent_dim
        parts = []
        if n_enc:
            parts.append(_init_latents(generator, y, operator, 1, "encoder", init_scale, gen, differentiable)[:, None])
        if restarts > n_enc:
            found = _search_starts(generator, operator, y, loss if weights is None else _per_sample_loss(loss),
                                   prior_weight, restarts - n_enc, search_candidates, init_scale, gen)
            parts.append(found)
            search_evals = search_candidates / n
        z0 = torch.cat(parts, 1).reshape(n * restarts, k)
    else:
        z0 = _init_latents(generator, y, operator, restarts, init, init_scale, gen, differentiable)
    lossfn = _masked(_per_sample_loss(loss), weights, restarts)
    y_rep = y.repeat_interleave(restarts, 0)

    def objective(x: torch.Tensor, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        f = lossfn(operator(x), y_rep[rows], rows)
        return f + prior_weight * z.pow(2).sum(1) if prior_weight else f

    common = dict(lr=lr, optimizer=optimizer, momentum=momentum, negation=negation, progress=progress, desc="csgm",
                  differentiable=differentiable)
    pruning = 0 < prune_after < steps and restarts > 1
    first = prune_after if pruning else steps
    z, f, hist, evals, div = _descend(z0, generator, objective, steps=first, schedule="constant" if pruning else schedule,
                                      tol=0.0 if pruning else tol, patience=patience, **common)
    best, idx = _pick_best(f, n, restarts)
    evals = evals.view(n, restarts).sum(1).to(dtype) + search_evals
    div = div.view(n, restarts).any(1)
    hist = hist.view(hist.shape[0], n, restarts).min(2).values if hist.numel() else hist.view(0, n)
    z, f = z[idx], f[idx]
    if pruning:  # the rest of the steps on each sample's best restart only
        # ``objective`` reads ``lossfn`` and ``y_rep`` when called: rebind them to one row per sample
        lossfn = _masked(_per_sample_loss(loss), weights, 1)
        y_rep = y
        z, f2, hist2, evals2, div2 = _descend(z, generator, objective, steps=steps - first, schedule=schedule, tol=tol,
                                              patience=patience, **common)
        f = torch.minimum(f, f2)  # _descend keeps the best iterate, and its first iterate is the phase-1 winner
        evals, div, hist = evals + evals2.to(dtype), div | div2, torch.cat([hist, hist2])
    with torch.enable_grad() if differentiable else torch.no_grad():
        x = generator(z)
    return InversionResult(z=z, x=x, loss=f, history=hist, generator_evals=evals, restart=best, diverged=div,
                           info={"method": "csgm", "search_evals_per_sample": search_evals})


def _masked(fn: LossFn, weights: torch.Tensor | None, repeat: int) -> Callable:
    if weights is None:
        return lambda pred, y, rows: fn(pred, y)
    w_rep = weights.repeat_interleave(repeat, 0)

    def f(pred: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        w = w_rep[rows].to(pred.dtype)
        # Mean squared error over the entries with weight 1 (the loss must be a per-entry square).
        return ((pred - y).pow(2) * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)

    return f


def subgradient(
    generator: nn.Module,
    y: torch.Tensor,
    operator: Operator | None = None,
    *,
    steps: int = 5000,
    lr: float = 0.1,
    negation: bool = True,
    restarts: int = 1,
    init_scale: float = 1.0,
    tol: float = 0.0,
    patience: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> InversionResult:
    """Subgradient descent with negation on ``f(z) = ½‖A G(z) − y‖²`` (Hand & Voroninski 2018; Huang et al.;
    Algorithm 1 of the non-expansive priors paper): each iteration replaces ``z`` by ``−z`` when
    ``f(−z) < f(z)``, then takes a plain (sub)gradient step. No prior. This is :func:`csgm` with the
    'sse' loss, plain gradient descent and the negation step.
    """
    res = csgm(generator, y, operator, loss="sse", optimizer="gd", negation=negation, steps=steps, lr=lr,
               restarts=restarts, init_scale=init_scale, tol=tol, patience=patience, seed=seed, progress=progress)
    res.info["method"] = "subgradient"
    return res


def _holdout_mask(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """1 = entry used for fitting, 0 = held out for choosing the radius (same split for every sample)."""
    g = torch.Generator().manual_seed(seed + 7919)
    entries = y[0].numel()
    held = torch.rand(entries, generator=g).argsort()[: max(1, round(fraction * entries))]
    mask = torch.ones(entries)
    mask[held] = 0
    return mask.view(1, *y.shape[1:]).expand_as(y).to(y.device)


def ilo(
    generator: nn.Module,
    y: torch.Tensor,
    operator: Operator | None = None,
    *,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | int = 300,
    radii: Sequence[float] | str = "auto",
    radius_grid: Sequence[float] = (0.0, 0.03, 0.1, 0.2, 0.4, 0.8),
    holdout: float = 0.15,
    se_rule: float = 1.0,
    lr: float = 0.2,
    schedule: str | Callable[[int, int], float] = "ramp",
    clamp_output: bool = True,
    csgm_kwargs: dict | None = None,
    loss: str | LossFn = "mse",
    seed: int = 0,
    progress: bool = False,
) -> InversionResult:
    """Intermediate Layer Optimisation (Daras et al. 2021) with automatic per-sample radii.

    1. CSGM in z (``csgm_kwargs``: restarts, steps, λ ...).
    2. For each split point ``i`` in ``layers`` (default: every intermediate layer and the output),
       optimise the input ``h`` of ``G2 = split(i)[1]`` by projected Adam within the ℓ1 ball
       ``‖h − h0‖₁ ≤ ρ·‖h0‖₁`` around ``h0``, the image of the previous stage's solution.

    Radii: with ``radii="auto"`` every relative radius ρ of ``radius_grid`` is tried at once (in the
    batch), fitting on ``1 − holdout`` of the measurement entries; per sample, the smallest ρ whose
    held-out error is within ``se_rule`` standard errors of the best wins, and is refitted on all
    measurements. ρ = 0 (stay on the range)
    is a candidate, so a layer never makes the held-out error worse than staying put. This replaces
    the hand-tuned radii of the published code. Pass explicit relative radii (one per layer) to skip it.
    Each layer's steps default to ``steps``. ``loss`` is 'mse' or, with explicit radii, any per-sample
    callable ``(A(x), y) → loss`` (used by every stage, the first included unless ``csgm_kwargs`` sets
    one): classifier guidance (Daras et al. §4) is ILO with a classifier as ``A`` and a cross-entropy.
    """
    if not hasattr(generator, "split"):
        raise InputError(f"ILO needs a generator with split(i) (intermediate layers); {type(generator).__name__} "
                         "has none")
    if isinstance(loss, str) and loss != "mse":
        raise InputError(f"ILO takes loss='mse' or a callable, got {loss!r}")
    operator = _check_problem(generator, y, operator, loss)
    device, dtype = _device_dtype(generator)
    y = y.to(device)
    y = y.to(dtype) if y.is_floating_point() else y
    n = y.shape[0]
    num = generator.num_splits
    layers = list(range(1, num + 1)) if layers is None else list(layers)
    if not layers or any(not 1 <= i <= num for i in layers) or sorted(set(layers)) != layers:
        raise InputError(f"layers must be increasing split points in [1, {num}], got {layers}")
    steps_l = [steps] * len(layers) if isinstance(steps, int) else list(steps)
    if len(steps_l) != len(layers):
        raise InputError(f"need one step count per layer ({len(layers)}), got {len(steps_l)}")
    if isinstance(radii, str):
        if radii != "auto":
            raise InputError(f"radii must be 'auto' or a list of relative radii, got {radii!r}")
        if callable(loss):
            raise InputError("radii='auto' cross-validates on held-out measurements (loss='mse'); with a custom "
                             "loss pass one relative radius per layer")
        grid = sorted(float(r) for r in radius_grid)
        if not grid or min(grid) < 0:
            raise InputError(f"radius_grid must be non-negative relative radii, got {radius_grid}")
        if not 0 < holdout < 1:
            raise InputError(f"holdout must be in (0, 1), got {holdout}")
    else:
        radii = [float(r) for r in radii]
        if len(radii) != len(layers) or min(radii) < 0:
            raise InputError(f"need one non-negative relative radius per layer ({len(layers)}), got {radii}")

    stage0 = csgm(generator, y, operator, seed=seed, progress=progress, **{"loss": loss, **(csgm_kwargs or {})})
    evals = stage0.generator_evals.clone()
    history = [stage0.history]
    chosen: list[torch.Tensor] = []
    h = stage0.z
    prev = 0
    fit_mask = _holdout_mask(y, holdout, seed) if radii == "auto" else None
    mse = _per_sample_loss(loss)
    for li, (i, n_steps) in enumerate(zip(layers, steps_l)):
        with torch.no_grad():
            h0 = nn.Sequential(*generator.blocks[prev:i])(h) if i > prev else h
        _, g2 = generator.split(i)
        last = i == num

        def decode(v: torch.Tensor, g2=g2, last=last) -> torch.Tensor:
            x = g2(v)
            return x.clamp(0, 1) if (last and clamp_output) else x

        def run(start: torch.Tensor, center: torch.Tensor, r_abs: torch.Tensor, y_rows: torch.Tensor,
                w_rows: torch.Tensor | None, n_steps: int = n_steps, i: int = i, decode=decode
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            lossfn = _masked(mse, w_rows, 1)  # w_rows (held-out masks) only with 'mse'

            def objective(x, v, rows):
                return lossfn(operator(x), y_rows[rows], rows)

            def project(v, rows):
                return center[rows] + project_l1_ball(v - center[rows], r_abs[rows])

            scale = center.flatten(1).abs().mean(1).clamp_min(1e-3)  # step sizes relative to the layer's scale
            v, f, hist, ev, _ = _descend(start, decode, objective, steps=n_steps, lr=lr * scale, schedule=schedule,
                                         project=project, progress=progress, desc=f"ilo layer {i}")
            return v, f, hist, ev

        norm1 = h0.flatten(1).abs().sum(1)
        if radii == "auto":
            k = len(grid)
            rho = torch.tensor(grid, device=device, dtype=dtype)
            center = h0.repeat_interleave(k, 0)
            r_abs = (norm1[:, None] * rho[None]).reshape(-1)
            y_rep = y.repeat_interleave(k, 0)
            v, _, _, ev = run(center.clone(), center, r_abs, y_rep, fit_mask.repeat_interleave(k, 0))
            evals += ev.view(n, k).sum(1)
            with torch.no_grad():
                pred = operator(decode(v))
                held = 1 - fit_mask.repeat_interleave(k, 0)
                val = ((pred - y_rep).pow(2) * held).flatten(1).sum(1) / held.flatten(1).sum(1)
            evals += 1 * k
            # One-standard-error rule (Hastie, Tibshirani, Friedman): the smallest radius whose held-out
            # error is within one SE of the best. The held-out error is a mean of h squared residuals,
            # so its relative SE is about sqrt(2 / h); with few held-out entries this keeps ILO near the range.
            h_count = float(held[0].sum())
            val = val.view(n, k)
            best_val = val.min(1, keepdim=True).values
            ok = val <= best_val * (1 + se_rule * math.sqrt(2.0 / max(h_count, 1.0)))
            pick = ok.to(torch.int8).argmax(1)  # grid is ascending: first admissible = smallest radius
            rho_n = rho[pick]
            start = v.view(n, k, *v.shape[1:])[torch.arange(n, device=device), pick]  # refit from the winner
        else:
            rho_n = torch.full((n,), radii[li], device=device, dtype=dtype)
            start = h0.clone()
        r_abs = norm1 * rho_n
        v, f, hist, ev = run(start, h0, r_abs, y, None)
        evals += ev
        history.append(hist)
        chosen.append(rho_n)
        h, prev = v, i
    with torch.no_grad():
        _, g2 = generator.split(prev)
        x = g2(h)
        x = x.clamp(0, 1) if clamp_output else x
        final = mse(operator(x), y)
    return InversionResult(
        z=stage0.z, x=x, loss=final, history=torch.cat(history), generator_evals=evals, restart=stage0.restart,
        diverged=stage0.diverged, info={"method": "ilo", "layers": layers, "relative_radii": torch.stack(chosen, 1),
                                        "hidden": h, "csgm_x": stage0.x, "csgm_loss": stage0.loss},
    )


# ------------------------------------------------------------------------------- deep image prior


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image anisotropic total variation: mean |horizontal| + mean |vertical| neighbour difference."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dv + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)


@dataclass
class DIPWeightPrior:
    """Learned regularisation of Van Veen et al. 2018: per convolution ℓ, the vector of per-output-channel
    mean weights ``w̄ℓ ∈ R^{Cℓ}`` is modelled as ``N(μℓ, Σℓ)``, fitted from DIP fits to a few training
    images (:func:`fit_dip_prior`); the penalty is ``Σℓ (w̄ℓ − μℓ)ᵀ Σℓ⁻¹ (w̄ℓ − μℓ)``."""

    means: list[torch.Tensor]
    precisions: list[torch.Tensor]
    slices: list[tuple[slice, tuple[int, ...]]]

    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` flat weights → ``(B,)`` Mahalanobis penalty."""
        total = w.new_zeros(w.shape[0])
        for mu, prec, (sl, shape) in zip(self.means, self.precisions, self.slices):
            d = w[:, sl].reshape(w.shape[0], shape[0], -1).mean(2) - mu.to(w)
            total = total + ((d @ prec.to(w)) * d).sum(1)
        return total


def fit_dip_prior(network: nn.Module, images: torch.Tensor, *, steps: int = 500, lr: float = 0.01,
                  seed: int = 0, progress: bool = False) -> DIPWeightPrior:
    """Fit :class:`DIPWeightPrior` (Van Veen et al. 2018): DIP on each fully observed training image,
    then per convolution the mean and covariance of the per-channel mean weights across the fits.
    The covariance is Ledoit–Wolf shrunk (scikit-learn): a handful of images estimate a ``Cℓ × Cℓ``
    matrix, and the plain sample covariance would be singular."""
    from sklearn.covariance import LedoitWolf

    if images.dim() != 4 or images.shape[0] < 2:
        raise InputError(f"fit_dip_prior needs a (T, C, H, W) batch of at least 2 training images, got "
                         f"{tuple(images.shape)}")
    res = dip(network, images, None, steps=steps, lr=lr, seed=seed, progress=progress)
    w = res.z.detach().double().cpu()
    means, precs = [], []
    slices = network.conv_weight_slices()
    for sl, shape in slices:
        wbar = w[:, sl].reshape(w.shape[0], shape[0], -1).mean(2).numpy()
        lw = LedoitWolf().fit(wbar)
        means.append(torch.from_numpy(lw.location_).float())
        precs.append(torch.from_numpy(lw.precision_).float())
    return DIPWeightPrior(means=means, precisions=precs, slices=slices)


def dip(
    network: nn.Module,
    y: torch.Tensor,
    operator: Operator | None = None,
    *,
    steps: int = 1000,
    lr: float = 0.01,
    restarts: int = 1,
    loss: str | LossFn = "mse",
    tv_weight: float = 0.0,
    weight_prior: DIPWeightPrior | None = None,
    prior_weight: float = 0.0,
    stop_at: float | torch.Tensor | None = None,
    tol: float = 0.0,
    patience: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> InversionResult:
    """Deep Image Prior (Ulyanov et al. 2018) for inverse problems (Van Veen et al. 2018, CS-DIP):
    ``argmin_w loss(A(G(z0; w)), y) + τ·TV(G(z0; w)) + λ·R(w)`` over the weights ``w`` of an *untrained*
    network (:class:`~manifold_defense.generators.DeepImagePrior`) with its input ``z0`` fixed.

    One network per sample and restart, all in one batch: the weights are rows of a ``(N·R, P)``
    tensor, the network is applied to each row with ``torch.func.vmap``, and the descent is the
    library's one loop (:func:`_descend`, Adam by default) with its per-sample early stopping:
    ``tol``/``patience`` on stalls, and ``stop_at`` (in the loss's units, e.g. the noise energy
    ``‖η‖²`` with ``loss='sum'``) stops a sample once its data term reaches the noise level, before
    DIP starts fitting the noise. ``weight_prior`` with ``prior_weight`` > 0 adds the learned
    regularisation (:func:`fit_dip_prior`). Restarts draw fresh initial weights; the restart with
    the lowest objective is kept. ``InversionResult.z`` holds the kept flat weights.
    """
    for attr in ("functional_forward", "flat_init", "output_shape"):
        if not hasattr(network, attr):
            raise InputError(f"dip needs a DeepImagePrior-like network (with {attr}), got {type(network).__name__}")
    operator = _check_operator(network.output_shape, y, operator, loss, "the network")
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    if tv_weight < 0 or prior_weight < 0:
        raise InputError(f"tv_weight and prior_weight must be >= 0, got {tv_weight}, {prior_weight}")
    if prior_weight > 0 and weight_prior is None:
        raise InputError("prior_weight > 0 needs a weight_prior (fit one with fit_dip_prior)")
    device, dtype = _device_dtype(network)
    y = y.to(device=device, dtype=dtype)
    n = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    w0 = network.flat_init(restarts, gen)
    w0 = w0[None].expand(n, *w0.shape).reshape(n * restarts, -1)
    lossfn = _per_sample_loss(loss)
    y_rep = y.repeat_interleave(restarts, 0)
    decode = torch.func.vmap(network.functional_forward)
    use_prior = weight_prior is not None and prior_weight > 0
    last: dict[str, torch.Tensor] = {}  # the latest call's data term: early stopping looks at the fit only

    def objective(x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        f = last["data"] = lossfn(operator(x), y_rep[rows])
        if tv_weight:
            f = f + tv_weight * total_variation(x)
        if use_prior:
            f = f + prior_weight * weight_prior.penalty(w)  # type: ignore[union-attr]
        return f

    if stop_at is not None:
        stop_at = torch.as_tensor(stop_at, dtype=dtype, device=device).expand(n).repeat_interleave(restarts)
    w, f, hist, evals, div = _descend(w0, decode, objective, steps=steps, lr=lr, tol=tol, patience=patience,
                                      progress=progress, desc="dip", stop_at=stop_at, stop_value=lambda: last["data"])
    best, idx = _pick_best(f, n, restarts)
    w, f = w[idx], f[idx]
    with torch.no_grad():
        x = decode(w)
    hist = hist.view(hist.shape[0], n, restarts).min(2).values if hist.numel() else hist.view(0, n)
    return InversionResult(z=w, x=x, loss=f, history=hist, generator_evals=evals.view(n, restarts).sum(1).to(dtype),
                           restart=best, diverged=div.view(n, restarts).any(1),
                           info={"method": "dip", "num_weights": int(w.shape[1]), "tv_weight": tv_weight,
                                 "prior_weight": prior_weight if use_prior else 0.0})


def invert(generator: nn.Module, y: torch.Tensor, operator: Operator | None = None, *, method: str = "csgm",
           **kwargs) -> InversionResult:
    """Dispatch to :func:`csgm`, :func:`ilo`, :func:`subgradient` or :func:`dip` (``generator`` is then
    the untrained network) by name."""
    methods = {"csgm": csgm, "ilo": ilo, "subgradient": subgradient, "dip": dip}
    if method not in methods:
        raise InputError(f"unknown inversion method {method!r}; use one of {', '.join(methods)}")
    return methods[method](generator, y, operator, **kwargs)
