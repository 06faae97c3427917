"""The registry of recovery recipes: named, published settings for inverse problems, used by the
``recover`` CLI and ``benchmarks/cs_mnist.py`` alike, so the command line reproduces the benchmark.

Scale conventions (CSGM, Bora et al. 2017). The paper's constants were set for ``A ~ N(0, 1)`` with the
*mean* squared residual. Here Gaussian and partial-circulant measurements are normalised,
``A ~ N(0, 1/m)``, and the same problems read ``‖y − A G(z)‖² + λ‖z‖²`` (``loss="sum"``) and Lasso
with ``α / m``. So every recipe takes its constants in the paper's units — ``prior_weight=0.1`` is
"VAE+Reg", ``alpha=0.1`` the paper's Lasso — and ``lasso_alpha`` converts α for the operator at
hand (÷ m for the normalised ensembles, as is for the others, whose entries are O(1)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from manifold_defense.baselines import lasso
from manifold_defense.generators import DeepImagePrior
from manifold_defense.inversion import METHODS
from manifold_defense.operators import GaussianMeasurements, Operator, PartialCirculant
from manifold_defense.validation import InputError

__all__ = ["RecoveryRecipe", "RECIPES", "Recovery", "recover", "lasso_alpha", "LOSS_SCALE"]

#: how the recipes scale their losses (see the module docstring)
LOSS_SCALE = ("loss='sum' = ‖y − A G(z)‖² with A ~ N(0, 1/m): CSGM's mean loss under A ~ N(0, 1); "
              "Lasso α in CSGM's units, ÷ m for normalised Gaussian / circulant operators")


@dataclass(frozen=True)
class RecoveryRecipe:
    """A named recovery: the method (an inversion method, ``dip``, or ``lasso``), its keyword arguments,
    what it needs (a trained ``generator``; ``weight_prior`` for ``dip_lr``) and what it is."""

    name: str
    method: str
    kwargs: dict[str, Any]
    description: str
    needs: tuple[str, ...] = ()
    tunable: tuple[str, ...] = field(default=())

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The recipe's keyword arguments with ``overrides`` (only the recipe's tunable ones) applied."""
        bad = sorted(set(overrides) - set(self.tunable))
        if bad:
            raise InputError(f"recipe {self.name!r} does not take {', '.join(bad)} (it takes: "
                             f"{', '.join(self.tunable) or 'nothing'})")
        return {**self.kwargs, **overrides}


_CSGM = {"loss": "sum", "restarts": 10, "steps": 1000, "lr": 0.01, "prior_weight": 0.0}
_CSGM_TUNABLE = ("restarts", "steps", "lr", "prior_weight")
_DIP = {"loss": "sum", "steps": 1000, "lr": 0.01, "channels": 32, "restarts": 1, "tv_weight": 0.0}

RECIPES: dict[str, RecoveryRecipe] = {r.name: r for r in [
    RecoveryRecipe("csgm", "csgm", dict(_CSGM), "CSGM (Bora et al. 2017): 10 restarts × 1000 Adam steps, lr 0.01, λ = 0",
                   ("generator",), _CSGM_TUNABLE),
    RecoveryRecipe("csgm_reg", "csgm", {**_CSGM, "prior_weight": 0.1}, "CSGM 'VAE+Reg': λ = 0.1", ("generator",),
                   _CSGM_TUNABLE),
    RecoveryRecipe("ilo", "ilo", {**_CSGM, "prior_weight": 0.1, "ilo_steps": 300},
                   "ILO (Daras et al. 2021): csgm_reg, then every layer within ℓ1 balls, radii chosen per image on "
                   "held-out measurements", ("generator",), (*_CSGM_TUNABLE, "ilo_steps")),
    RecoveryRecipe("subgradient", "subgradient", {"steps": 5000, "lr": 0.1, "restarts": 1},
                   "subgradient descent with negation (Hand & Voroninski 2018)", ("generator",), ("steps", "lr", "restarts")),
    RecoveryRecipe("dip", "dip", dict(_DIP), "Deep Image Prior (Ulyanov et al. 2018; CS-DIP, Van Veen et al. 2018), "
                   "stopped at the noise energy", (), ("steps", "lr", "restarts", "tv_weight", "channels")),
    RecoveryRecipe("dip_lr", "dip", {**_DIP, "prior_weight": 1.0}, "DIP with Van Veen et al.'s learned weight prior",
                   ("weight_prior",), ("steps", "lr", "restarts", "tv_weight", "channels", "prior_weight")),
    RecoveryRecipe("lasso", "lasso", {"basis": "pixel", "alpha": 0.1}, "Lasso in the pixel basis, α = 0.1 (CSGM's)",
                   (), ("alpha",)),
    RecoveryRecipe("lasso_dct", "lasso", {"basis": "dct", "alpha": 0.1}, "Lasso in the DCT basis", (), ("alpha",)),
    RecoveryRecipe("lasso_wavelet", "lasso", {"basis": "wavelet", "alpha": 0.1}, "Lasso in the db4 wavelet basis", (),
                   ("alpha",)),
]}


def lasso_alpha(alpha: float, operator: Operator) -> float:
    """scikit-learn's Lasso α for ``alpha`` in CSGM's units: ``alpha / m`` for the normalised Gaussian and
    partial-circulant operators (entries ~ N(0, 1/m)), ``alpha`` otherwise."""
    return alpha / operator.m if isinstance(operator, (GaussianMeasurements, PartialCirculant)) else alpha


@dataclass
class Recovery:
    """Reconstructions ``x``, network/generator evaluations per image, wall seconds, and the settings used."""

    x: torch.Tensor
    evals_per_image: float
    seconds: float
    settings: dict[str, Any]


def recover(name: str, y: torch.Tensor, operator: Operator, *, generator: nn.Module | None = None,
            noise: float = 0.0, weight_prior: Any = None, seed: int = 0, progress: bool = False,
            **overrides: Any) -> Recovery:
    """Recover images from ``y = A(x) + η`` with recipe ``name`` (see ``RECIPES``).

    ``noise`` is the total noise norm σ (‖η‖ ≈ σ): DIP stops at the noise energy σ² (Morozov's
    discrepancy principle). ``overrides`` change the recipe's tunable settings (``recipe.tunable``).
    """
    if name not in RECIPES:
        raise InputError(f"unknown recovery recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if "generator" in recipe.needs and generator is None:
        raise InputError(f"recipe {name!r} needs a trained generator")
    if "weight_prior" in recipe.needs and weight_prior is None:
        raise InputError(f"recipe {name!r} needs a weight_prior (fit one with inversion.fit_dip_prior)")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    kw = recipe.settings(**overrides)
    t0 = time.perf_counter()
    if recipe.method == "lasso":
        x = lasso(operator, y, alpha=lasso_alpha(kw["alpha"], operator), basis=kw["basis"])
        evals = 0.0
    elif recipe.method == "dip":
        kw = dict(kw)
        net = DeepImagePrior(operator.in_shape, channels=kw.pop("channels"), seed=seed).to(y.device)
        res = METHODS["dip"](net, y, operator, seed=seed, progress=progress, stop_at=noise**2 if noise > 0 else None,
                             weight_prior=weight_prior, **kw)
        x, evals = res.x, res.evals_per_sample
    elif recipe.method == "ilo":
        csgm_kw = {k: v for k, v in kw.items() if k != "ilo_steps"}  # stage 1; then ilo_steps per layer
        res = METHODS["ilo"](generator, y, operator, csgm_kwargs=csgm_kw, steps=kw["ilo_steps"], seed=seed,
                             progress=progress)
        x, evals = res.x, res.evals_per_sample
    else:
        res = METHODS[recipe.method](generator, y, operator, seed=seed, progress=progress, **kw)
        x, evals = res.x, res.evals_per_sample
    return Recovery(x=x.detach(), evals_per_image=float(evals), seconds=time.perf_counter() - t0, settings=kw)
