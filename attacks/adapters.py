"""Attacks from the libraries the field uses, behind the library's :class:`Attack` interface.

- :class:`CarliniWagnerL2` — Carlini & Wagner 2017, through foolbox 3 (``L2CarliniWagnerAttack``).
- :class:`AutoAttack` — Croce & Hein 2020, through pyautoattack: 'standard' (APGD-CE, APGD-T, FAB-T,
  Square) or 'rand' (APGD-CE, APGD-DLR with 20 EOT iterations, for randomised defenses).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from manifold_defense.attacks.base import Attack
from manifold_defense.attacks.pixel import project_to_ball
from manifold_defense.validation import InputError

__all__ = ["CarliniWagnerL2", "AutoAttack", "foolbox_model"]


def foolbox_model(model: nn.Module):
    """``foolbox.PyTorchModel`` for images in [0, 1] (foolbox imports GitPython: keep it quiet without git)."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import foolbox as fb

    return fb.PyTorchModel(model.eval(), bounds=(0, 1))


class CarliniWagnerL2(Attack):
    """C&W ℓ2 (foolbox): ``binary_search_steps`` × ``steps`` Adam iterations; the result is clipped to ε."""

    norm = "l2"

    def __init__(self, *, binary_search_steps: int = 5, steps: int = 100, stepsize: float = 0.01,
                 confidence: float = 0.0, initial_const: float = 1e-3) -> None:
        if binary_search_steps < 1 or steps < 1:
            raise InputError("binary_search_steps and steps must be >= 1")
        self.kwargs = {"binary_search_steps": binary_search_steps, "steps": steps, "stepsize": stepsize,
                       "confidence": confidence, "initial_const": initial_const}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        import foolbox as fb

        _, clipped, _ = fb.attacks.L2CarliniWagnerAttack(**self.kwargs)(foolbox_model(model), x, y.to(x.device),
                                                                          epsilons=epsilon)
        return clipped


class AutoAttack(Attack):
    """AutoAttack (pyautoattack) in ℓ∞ or ℓ2. ``version`` 'standard', 'rand' or 'custom' (with ``attacks``);
    ``n_iter`` overrides the APGD iteration count (100 in the published suite) for quick runs.
    """

    def __init__(self, *, norm: str = "linf", version: str = "standard", attacks: list[str] | None = None,
                 n_iter: int | None = None, seed: int = 0, batch_size: int = 250) -> None:
        if norm not in ("linf", "l2"):
            raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if version not in ("standard", "rand", "plus", "custom"):
            raise InputError(f"unknown AutoAttack version {version!r}")
        if (version == "custom") != (attacks is not None):
            raise InputError("pass attacks=[...] exactly when version='custom'")
        self.norm, self.version, self.attacks = norm, version, attacks
        self.n_iter, self.seed, self.batch_size = n_iter, seed, batch_size

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        from pyautoattack import AutoAttack as _AutoAttack

        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        aa = _AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[self.norm], eps=epsilon, version=self.version,
                         attacks=self.attacks, seed=self.seed, device=x.device)
        aa.verbose = False
        if self.n_iter is not None:
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = self.n_iter
        with torch.enable_grad():
            out = aa.run_standard_evaluation(x, y.to(x.device), batch_size=self.batch_size)
        adv = out[0] if isinstance(out, tuple) else out  # pyautoattack returns (x_adv, y_adv)
        # pyautoattack may overshoot ε by float rounding; project back so the reported norm is honest.
        return (x + project_to_ball(adv - x, epsilon, self.norm)).clamp(0, 1)
