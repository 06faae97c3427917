"""CSGM: Bora, Jalal, Price, Dimakis, "Compressed Sensing using Generative Models", ICML 2017.

``ẑ = argmin_z loss(A(G(z)), y) + λ‖z‖²`` from several starting points per sample, all in one batch;
the restart with the lowest objective is kept. Starting points: random, the generator's encoder, the
best of a random latent search, or given latents; ``prune_after`` continues only each sample's best
restart after a few steps (successive halving down to one).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from manifold_defense.inversion.engine import StepRule, descend, get_step_rule
from manifold_defense.inversion.result import InversionResult, check_generator, check_operator, device_dtype, pick_best
from manifold_defense.inversion.terms import QUADRATIC_SCALE, DataTerm, LatentPrior, LossFn, per_sample_loss
from manifold_defense.operators import Identity, Operator
from manifold_defense.protocols import Encoded
from manifold_defense.utils import keyed_normal, rows_at_least
from manifold_defense.validation import InputError

__all__ = ["csgm", "init_latents", "search_starts", "INITS"]

INITS = ("random", "encoder", "search", "encoder+search")


def init_latents(generator: nn.Module, y: torch.Tensor, operator: Operator, restarts: int, init: str | torch.Tensor,
                 init_scale: float, gen: torch.Generator, differentiable: bool = False, min_rows: int = 1,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(n · restarts, k)`` starting latents: 'random' (``init_scale · N(0, I)``), 'encoder' (restart 0 at
    ``encode(x0)``, the others perturb it; ``x0`` is ``y`` for the identity, ``Aᵀy`` for a linear
    operator) or a tensor ``(n, k)`` (restarts perturb it) or ``(n, restarts, k)``. With ``keys`` (one per
    sample) the random draws of sample ``i`` depend on ``keys[i]`` only, not on its place in the batch."""
    device, dtype = device_dtype(generator)
    n, k = y.shape[0], generator.latent_dim
    if keys is not None:
        noise = keyed_normal(keys.to(device), (restarts, k), dtype) * init_scale
    else:
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
        if not isinstance(generator, Encoded):
            raise InputError(f"init='encoder' needs a generator with an encoder; {type(generator).__name__} has none")
        if isinstance(operator, Identity):
            x0 = y
        elif operator.linear:
            x0 = operator.adjoint(y).clamp(0, 1)  # a crude back-projection; restarts cover the rest
        else:
            raise InputError("init='encoder' needs a linear operator")
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            z_enc = rows_at_least(generator.encode, x0.to(dtype), min_rows)
        z0 = z_enc[:, None].expand(n, restarts, k).clone()
        z0[:, 1:] += noise[:, 1:]  # restart 0 is the encoder's code, the others perturb it
        return z0.reshape(n * restarts, k)
    raise InputError(f"init must be one of {', '.join(INITS)} or a tensor of latents, got {init!r}")


def search_starts(generator: nn.Module, operator: Operator, y: torch.Tensor, loss: str | LossFn, prior_weight: float,
                  restarts: int, candidates: int, init_scale: float, gen: torch.Generator,
                  mask: torch.Tensor | None = None, min_rows: int = 1) -> torch.Tensor:
    """The ``restarts`` best of ``candidates`` random latents per sample by the objective (forward passes
    only, candidates shared by all samples, in chunks so memory stays bounded). Returns ``(n, restarts, k)``.

    For the squared-error losses the scores come from ``‖w⊙y‖² + w·p² − 2 (w⊙y)·p`` (``w`` the 0/1
    mask, or ones): matrix products per chunk instead of an ``n × candidates`` difference tensor. With
    ``min_rows`` the products have at least that many rows (a sample's scores then do not depend on its batch)."""
    if y.shape[0] < min_rows:
        pad = lambda t: None if t is None else torch.cat([t, t[-1:].expand(min_rows - t.shape[0], *t.shape[1:])])  # noqa: E731
        return search_starts(generator, operator, pad(y), loss, prior_weight, restarts, candidates, init_scale, gen,
                             pad(mask), min_rows)[: y.shape[0]]
    device, dtype = device_dtype(generator)
    n, k = y.shape[0], generator.latent_dim
    if candidates < restarts:
        raise InputError(f"search_candidates ({candidates}) must be >= restarts ({restarts})")
    zc = (torch.randn(candidates, k, generator=gen, dtype=dtype) * init_scale).to(device)
    scores = torch.empty(n, candidates, device=device, dtype=dtype)
    quadratic = isinstance(loss, str) and loss in QUADRATIC_SCALE
    if mask is not None and not quadratic:
        raise InputError(f"a masked search needs a squared-error loss, got {loss!r}")
    lossfn = None if quadratic else per_sample_loss(loss)
    yf = y.flatten(1)
    wf = None if mask is None else mask.flatten(1).to(dtype)
    with torch.no_grad():
        for c0 in range(0, candidates, 512):
            pc = operator(generator(zc[c0 : c0 + 512]))
            c = len(pc)
            if quadratic:
                pf = pc.flatten(1)
                if wf is None:
                    d = yf.pow(2).sum(1)[:, None] + pf.pow(2).sum(1)[None] - 2 * yf @ pf.T
                    count = torch.full((n, 1), float(pf.shape[1]), device=device, dtype=dtype)
                else:
                    d = (wf * yf.pow(2)).sum(1)[:, None] + wf @ pf.pow(2).T - 2 * (wf * yf) @ pf.T
                    count = wf.sum(1, keepdim=True).clamp_min(1)
                scale = QUADRATIC_SCALE[loss]  # type: ignore[index]
                scores[:, c0 : c0 + c] = (d.clamp_min(0) / count) if scale is None else scale * d.clamp_min(0)
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


def csgm(
    generator: nn.Module,
    y: torch.Tensor,
    operator: Operator | None = None,
    *,
    prior_weight: float = 0.0,
    restarts: int = 1,
    steps: int = 1000,
    lr: float = 0.01,
    optimizer: str | StepRule = "adam",
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
    min_rows: int = 1,
    sample_keys: torch.Tensor | None = None,
) -> InversionResult:
    """CSGM (Bora et al. 2017): ``argmin_z loss(A(G(z)), y) + λ‖z‖²`` by gradient descent from ``restarts``
    starting points per sample, all in one batch; the restart with the lowest objective is kept.

    ``loss`` is 'mse' (mean over measurement entries), 'sum' (‖A G(z) − y‖²), 'sse' (½ sum) or any callable
    ``(A(G(z)), y) → per-sample loss`` (e.g. cross-entropy to target classes for guidance).
    ``optimizer``: 'adam', 'sgd' (heavy ball with ``momentum``), 'gd' or a step rule of the engine.
    ``tol``/``patience`` enable per-sample early stopping. ``weights`` (0/1, the shape of ``y``) restrict
    a squared-error loss to some measurement entries (the search too). ``negation`` tries ``−z`` before
    every step (see ``subgradient``). ``differentiable=True`` keeps the
    graph from ``y`` (and the encoder start) to the result, for attacks through the unrolled inversion.
    ``init`` is 'random', 'encoder', 'search' (the ``restarts`` best of ``search_candidates`` random
    latents by the objective, forward passes only), 'encoder+search' (restart 0 at the encoder's code,
    the others at the best search candidates) or a tensor of latents. The search's forward passes are
    shared by the batch and count ``search_candidates / n`` towards each sample's ``generator_evals``.
    ``prune_after`` > 0: after that many steps (constant learning rate) only each sample's best restart
    continues, for the remaining ``steps − prune_after`` steps under ``schedule`` (successive halving
    down to one restart: all restarts explore, one converges); 0 or ≥ ``steps`` never prunes.
    ``min_rows`` > 1 pads every generator and encoder pass to that many rows and ``sample_keys`` (one
    64-bit key per sample, e.g. ``content_keys``) draws each sample's random
    restarts from its own key; with both, each sample's result is the same whatever else is in the batch.
    The search's candidates come from a stream of their own (seeded by ``seed``), shared by every batch.
    """
    check_generator(generator)
    operator = check_operator(tuple(generator.output_shape), y, operator, loss, "the generator")
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    if prune_after < 0:
        raise InputError(f"prune_after must be >= 0 (0 or >= steps: never prune), got {prune_after}")
    if sample_keys is not None and tuple(sample_keys.shape) != (y.shape[0],):
        raise InputError(f"sample_keys must hold one key per sample ({y.shape[0]}), got shape {tuple(sample_keys.shape)}")
    if weights is not None and tuple(weights.shape) != tuple(y.shape):
        raise InputError(f"weights must have the shape of y {tuple(y.shape)}, got {tuple(weights.shape)}")
    prior = LatentPrior(prior_weight)
    device, dtype = device_dtype(generator)
    y = y.to(device)
    if y.is_floating_point():
        y = y.to(dtype)
    n = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if not isinstance(optimizer, StepRule) and optimizer not in ("adam", "sgd", "gd"):
        raise InputError(f"optimizer must be 'adam', 'sgd', 'gd' or a StepRule, got {optimizer!r}")
    rule = get_step_rule(optimizer, **({"momentum": momentum} if optimizer == "sgd" else {}))
    search_evals = 0.0
    if isinstance(init, str) and init in ("search", "encoder+search"):
        n_enc = int(init == "encoder+search")
        parts = []
        if n_enc:
            parts.append(init_latents(generator, y, operator, 1, "encoder", init_scale, gen, differentiable,
                                      min_rows, sample_keys)[:, None])
        if restarts > n_enc:
            candidates = torch.Generator().manual_seed(seed)  # the same candidates whatever the batch
            parts.append(search_starts(generator, operator, y, loss, prior_weight, restarts - n_enc, search_candidates,
                                       init_scale, candidates, mask=weights, min_rows=min_rows))
            search_evals = search_candidates / n
        z0 = torch.cat(parts, 1).reshape(n * restarts, generator.latent_dim)
    else:
        z0 = init_latents(generator, y, operator, restarts, init, init_scale, gen, differentiable, min_rows, sample_keys)

    def run(start: torch.Tensor, repeat: int, n_steps: int, sched, stop_tol: float):
        mask = None if weights is None else weights.repeat_interleave(repeat, 0)
        data = DataTerm(y.repeat_interleave(repeat, 0), operator, loss, mask)
        return descend(start, generator, data, penalties=[prior] if prior_weight else [], steps=n_steps, lr=lr,
                       step_rule=rule, schedule=sched, negation=negation, tol=stop_tol,
                       patience=patience, differentiable=differentiable, min_rows=min_rows, progress=progress,
                       desc="csgm")

    pruning = 0 < prune_after < steps and restarts > 1
    first = prune_after if pruning else steps
    d1 = run(z0, restarts, first, "constant" if pruning else schedule, 0.0 if pruning else tol)
    best, idx = pick_best(d1.objective, n, restarts)
    evals = d1.evaluations.view(n, restarts).sum(1).to(dtype) + search_evals
    div = d1.diverged.view(n, restarts).any(1)
    hist = d1.history.view(d1.history.shape[0], n, restarts).min(2).values if d1.history.numel() else d1.history.view(0, n)
    z, f, d = d1.variables[idx], d1.objective[idx], d1.data[idx]
    if pruning:  # the rest of the steps on each sample's best restart only; its first iterate is the phase-1 winner
        d2 = run(z, 1, steps - first, schedule, tol)
        take = d2.objective <= f
        z, f, d = d2.variables, torch.where(take, d2.objective, f), torch.where(take, d2.data, d)
        evals, div, hist = evals + d2.evaluations.to(dtype), div | d2.diverged, torch.cat([hist, d2.history])
    with torch.enable_grad() if differentiable else torch.no_grad():
        x = rows_at_least(generator, z, min_rows)
    return InversionResult(z=z, x=x, loss=d, objective=f, history=hist, generator_evals=evals, restart=best,
                           diverged=div, info={"method": "csgm", "search_evals_per_sample": search_evals})

