"""ILO: Daras, Dean, Jalal, Dimakis, "Intermediate Layer Optimization for Inverse Problems using Deep
Generative Models", ICML 2021.

CSGM first, then the inputs of successively deeper layers of ``G = G2 ∘ G1``, each within an ℓ1 ball
(projection of Duchi et al. 2008) around the previous solution's image, so the result may leave the
generator's range by a controlled amount. The radii, which the published code leaves to hand tuning,
are chosen per sample by cross-validation on held-out measurement entries.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from manifold_defense.inversion.constraints import project_l1_ball
from manifold_defense.inversion.csgm import csgm
from manifold_defense.inversion.engine import Descent, descend
from manifold_defense.inversion.result import InversionResult, check_generator, check_operator, device_dtype
from manifold_defense.inversion.terms import DataTerm, LossFn, per_sample_loss
from manifold_defense.operators import Operator
from manifold_defense.protocols import Splittable
from manifold_defense.validation import InputError

__all__ = ["ilo", "holdout_mask"]


def holdout_mask(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """1 = entry used for fitting, 0 = held out for choosing the radius (the same split for every sample)."""
    g = torch.Generator().manual_seed(seed + 7919)
    entries = y[0].numel()
    held = torch.rand(entries, generator=g).argsort()[: max(1, round(fraction * entries))]
    mask = torch.ones(entries)
    mask[held] = 0
    return mask.view(1, *y.shape[1:]).expand_as(y).to(y.device)


class _Layer:
    """One ILO stage: optimise the input ``h`` of ``G2 = split(i)[1]`` within ``‖h − h0‖₁ ≤ r`` per row."""

    def __init__(self, generator: nn.Module, i: int, last: bool, clamp: bool, operator: Operator, steps: int, lr: float,
                 schedule: str | Callable[[int, int], float], progress: bool) -> None:
        _, self.g2 = generator.split(i)
        self.clamp = last and clamp
        self.i, self.operator, self.steps, self.lr, self.schedule, self.progress = i, operator, steps, lr, schedule, progress

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        x = self.g2(v)
        return x.clamp(0, 1) if self.clamp else x

    def run(self, start: torch.Tensor, center: torch.Tensor, r_abs: torch.Tensor, data: DataTerm) -> Descent:
        def project(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return center[rows] + project_l1_ball(v - center[rows], r_abs[rows])

        scale = center.flatten(1).abs().mean(1).clamp_min(1e-3)  # step sizes relative to the layer's scale
        return descend(start, self.decode, data, steps=self.steps, lr=self.lr * scale, schedule=self.schedule,
                       project=project, progress=self.progress, desc=f"ilo layer {self.i}")


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

    Radii (``radii="auto"``): a *selection* chain fits only ``1 − holdout`` of the measurement entries —
    its CSGM stage included — and at every layer tries each relative radius ρ of ``radius_grid`` at once
    (in the batch); per sample, the smallest ρ whose held-out error is within ``se_rule`` standard errors
    of the best wins. Every candidate, ρ = 0 (stay on the range) included, is fitted on the same entries
    and scored on the same held-out ones, so no candidate is judged on data it was fitted to. The
    returned solution comes from a second chain on all measurements (CSGM refitted from the selection
    chain's latent, then each layer with its chosen ρ). Explicit relative radii (one per layer) skip the
    selection. Each layer's steps default to ``steps``. ``loss`` is 'mse' or, with explicit radii, any
    per-sample callable ``(A(x), y) → loss`` (used by every stage, the first included unless
    ``csgm_kwargs`` sets one): classifier guidance (Daras et al. §4) is ILO with a classifier as ``A``.
    """
    if not isinstance(generator, Splittable):
        raise InputError(f"ILO needs a generator with split(i) (intermediate layers); {type(generator).__name__} "
                         "has none")
    check_generator(generator)
    if isinstance(loss, str) and loss != "mse":
        raise InputError(f"ILO takes loss='mse' or a callable, got {loss!r}")
    operator = check_operator(tuple(generator.output_shape), y, operator, loss, "the generator")
    device, dtype = device_dtype(generator)
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
    auto = isinstance(radii, str)
    if auto:
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

    c_kw = {"loss": loss, **(csgm_kwargs or {})}
    fit = holdout_mask(y, holdout, seed) if auto else None
    if auto:  # the selection chain's CSGM sees the fitting entries only, then the final chain refits from it
        sel = csgm(generator, y, operator, seed=seed, progress=progress, weights=fit, **c_kw)
        stage0 = csgm(generator, y, operator, seed=seed, progress=progress,
                      **{**c_kw, "init": sel.z, "restarts": 1, "prune_after": 0})
        evals, diverged, sel_h = sel.generator_evals + stage0.generator_evals, sel.diverged | stage0.diverged, sel.z
    else:
        stage0 = csgm(generator, y, operator, seed=seed, progress=progress, **c_kw)
        evals, diverged = stage0.generator_evals.clone(), stage0.diverged.clone()
    history, chosen = [stage0.history], []
    h, prev = stage0.z, 0
    for li, (i, n_steps) in enumerate(zip(layers, steps_l)):
        stage = _Layer(generator, i, i == num, clamp_output, operator, n_steps, lr, schedule, progress)
        advance = generator.segment(prev, i)
        with torch.no_grad():
            h0 = advance(h)
        if auto:
            k = len(grid)
            rho = torch.tensor(grid, device=device, dtype=dtype)
            with torch.no_grad():
                c0 = advance(sel_h).repeat_interleave(k, 0)
            r_abs = (c0.flatten(1).abs().sum(1).view(n, k) * rho[None]).reshape(-1)
            y_rep, fit_rep = y.repeat_interleave(k, 0), fit.repeat_interleave(k, 0)
            cand = stage.run(c0.clone(), c0, r_abs, DataTerm(y_rep, operator, "mse", fit_rep))
            with torch.no_grad():
                val = DataTerm(y_rep, operator, "mse", 1 - fit_rep)(stage.decode(cand.variables), cand.variables,
                                                                   torch.arange(n * k, device=device)).view(n, k)
            evals += cand.evaluations.view(n, k).sum(1) + k
            diverged |= cand.diverged.view(n, k).any(1)
            # One-standard-error rule (Hastie, Tibshirani, Friedman): the smallest radius whose held-out
            # error is within one SE of the best. The held-out error is a mean of h squared residuals,
            # so its relative SE is about sqrt(2 / h); with few held-out entries this keeps ILO near the range.
            h_count = float((1 - fit[0]).sum())
            ok = val <= val.min(1, keepdim=True).values * (1 + se_rule * math.sqrt(2.0 / max(h_count, 1.0)))
            pick = ok.to(torch.int8).argmax(1)  # grid is ascending: the first admissible is the smallest radius
            rho_n = rho[pick]
            sel_h = cand.variables.view(n, k, *cand.variables.shape[1:])[torch.arange(n, device=device), pick]
        else:
            rho_n = torch.full((n,), radii[li], device=device, dtype=dtype)
        fin = stage.run(h0.clone(), h0, h0.flatten(1).abs().sum(1) * rho_n, DataTerm(y, operator, loss))
        evals += fin.evaluations
        diverged |= fin.diverged
        history.append(fin.history)
        chosen.append(rho_n)
        h, prev = fin.variables, i
    with torch.no_grad():
        x = _Layer(generator, prev, prev == num, clamp_output, operator, 0, lr, schedule, False).decode(h)
        final = per_sample_loss(loss)(operator(x), y)
    return InversionResult(
        z=stage0.z, x=x, loss=final, objective=final, history=torch.cat(history), generator_evals=evals,
        restart=stage0.restart, diverged=diverged,
        info={"method": "ilo", "layers": layers, "relative_radii": torch.stack(chosen, 1), "hidden": h,
              "csgm_x": stage0.x, "csgm_loss": stage0.loss,
              "radius_selection": f"held-out {holdout:g} of the entries" if auto else "given"},
    )
