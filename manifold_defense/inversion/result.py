"""What every inversion returns, and the checks its recipes share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from manifold_defense.inversion.terms import LossFn
from manifold_defense.operators import Identity, Operator
from manifold_defense.protocols import ClassConditional, Generator, describe
from manifold_defense.validation import InputError

__all__ = ["InversionResult", "DivergenceWarning", "check_generator", "check_operator", "device_dtype", "pick_best"]


class DivergenceWarning(RuntimeWarning):
    """Some samples' objective became non-finite; they keep their last finite iterate and are flagged."""


@dataclass
class InversionResult:
    """What an inversion returns (one row per input sample).

    ``z``: the kept latent code (ILO: the first-stage latent; DIP: the flat network weights). ``x``: the
    reconstruction. ``loss``: the data term of the kept solution, ``loss(A(x), y)`` — the fit, in the
    loss's units, for every method. ``objective``: what was minimised (data term plus priors and
    penalties). ``history``: ``(steps, N)`` best objective per step. ``generator_evals``: generator passes
    per sample (all restarts and stages; a forward with its backward counts once; passes shared by a
    batch, like a latent search, count their share). ``restart``: index of the kept restart.
    ``diverged``: samples whose objective became non-finite at some point in any stage (they keep their
    last finite iterate). ``info``: method-specific extras (ILO radii, chosen layers ...).
    """

    z: torch.Tensor
    x: torch.Tensor
    loss: torch.Tensor
    objective: torch.Tensor
    history: torch.Tensor
    generator_evals: torch.Tensor
    restart: torch.Tensor
    diverged: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def evals_per_sample(self) -> float:
        """Mean generator passes per sample."""
        return float(self.generator_evals.float().mean())


def device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter."""
    p = next(module.parameters())
    return p.device, p.dtype


def check_generator(generator: object) -> None:
    """``generator`` must meet the ``Generator`` protocol."""
    if isinstance(generator, ClassConditional) and not isinstance(generator, Generator):
        raise InputError(f"{type(generator).__name__} is class-conditional (one range per class); this needs one "
                         f"range: pass generator.condition(label), or use a class-conditional attack")
    if not isinstance(generator, Generator):
        raise InputError(f"{type(generator).__name__} is not a manifold_defense Generator (needs latent_dim, "
                         f"output_shape and sample_latent; it meets: {describe(generator)})")


def check_operator(shape: tuple[int, ...], y: torch.Tensor, operator: Operator | None, loss: str | LossFn,
                   maker: str) -> Operator:
    """The operator (default identity) takes images of ``shape`` (made by ``maker``); ``y`` are valid
    measurements for it (with a custom loss, any non-empty finite batch)."""
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


def pick_best(values: torch.Tensor, n: int, restarts: int, rel_tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the restart with the lowest finite value: ``(restart index, flat row index)``.

    Near-ties go to the lowest index: among restarts within ``rel_tol`` (relative) of the best, the first
    wins. A strict argmin would let rounding decide between two restarts of (almost) equal value, and
    float32 rounding depends on the batch a sample sits in (matrix products of other shapes), so the same
    input could land in another basin in another batch; with the tolerance only a gap of about
    ``rel_tol`` can flip, which rounding of ~1e-7 almost never reaches.
    """
    per = values.view(n, restarts)
    per = torch.where(torch.isfinite(per), per, torch.full_like(per, math.inf))
    low = per.min(1, keepdim=True).values
    near = per <= low + rel_tol * low.abs() + 1e-12
    best = near.to(torch.int8).argmax(1)
    return best, torch.arange(n, device=values.device) * restarts + best
