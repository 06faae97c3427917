"""Subgradient descent with negation: Hand & Voroninski, "Global Guarantees for Enforcing Deep Generative
Priors by Empirical Risk", COLT 2018; Huang, Hand, Heckel, Voroninski, "A Provably Convergent Scheme for
Compressive Sensing under Random Generative Priors", 2018."""

from __future__ import annotations

import torch
from torch import nn

from manifold_defense.inversion.csgm import csgm
from manifold_defense.inversion.result import InversionResult
from manifold_defense.operators import Operator

__all__ = ["subgradient"]


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
    """Subgradient descent on ``f(z) = ½‖A G(z) − y‖²``: each iteration replaces ``z`` by ``−z`` when
    ``f(−z) < f(z)``, then takes a plain (sub)gradient step. No prior. This is
    ``csgm`` with the 'sse' loss, plain gradient descent and the negation step.
    """
    res = csgm(generator, y, operator, loss="sse", optimizer="gd", negation=negation, steps=steps, lr=lr,
               restarts=restarts, init_scale=init_scale, tol=tol, patience=patience, seed=seed, progress=progress)
    res.info["method"] = "subgradient"
    return res
