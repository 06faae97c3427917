"""Deep Image Prior: Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018; for inverse problems
Van Veen, Jalal, Soltanolkotabi, Price, Vishwanath, Dimakis, "Compressed Sensing with Deep Image Prior and
Learned Regularization", 2018 (CS-DIP).

The descent engine's variables are the weights of an *untrained* network, one network per sample and
restart (rows of a ``(N·R, P)`` tensor, applied with ``torch.func.vmap``); its input stays fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from manifold_defense.inversion.engine import descend
from manifold_defense.inversion.result import InversionResult, check_operator, device_dtype, pick_best
from manifold_defense.inversion.terms import DataTerm, LossFn, TotalVariation
from manifold_defense.operators import Operator
from manifold_defense.validation import InputError

__all__ = ["dip", "fit_dip_prior", "DIPWeightPrior"]


@dataclass
class DIPWeightPrior:
    """Learned regularisation of Van Veen et al. 2018: per convolution ℓ, the vector of per-output-channel
    mean weights ``w̄ℓ ∈ R^{Cℓ}`` is modelled as ``N(μℓ, Σℓ)``, fitted from DIP fits to a few training
    images (``fit_dip_prior``); the penalty is ``Σℓ (w̄ℓ − μℓ)ᵀ Σℓ⁻¹ (w̄ℓ − μℓ)``."""

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


class _WeightPenalty:
    """``weight · prior.penalty(w)`` as a loss term of the engine."""

    def __init__(self, prior: DIPWeightPrior, weight: float) -> None:
        self.prior, self.weight = prior, weight

    def __call__(self, x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.weight * self.prior.penalty(w)


def fit_dip_prior(network: nn.Module, images: torch.Tensor, *, steps: int = 500, lr: float = 0.01,
                  seed: int = 0, progress: bool = False) -> DIPWeightPrior:
    """Fit ``DIPWeightPrior`` (Van Veen et al. 2018): DIP on each fully observed training image,
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
    """Deep Image Prior for inverse problems (CS-DIP): ``argmin_w loss(A(G(z0; w)), y) + τ·TV(G(z0; w)) +
    λ·R(w)`` over the weights ``w`` of an *untrained* network
    (``DeepImagePrior``) with its input ``z0`` fixed.

    One network per sample and restart, all in one batch, on the engine (Adam) with its per-sample
    early stopping: ``tol``/``patience`` on stalls, and ``stop_at`` (in the loss's units, e.g. the noise
    energy ``‖η‖²`` with ``loss='sum'``) stops a sample once its data term reaches the noise level,
    before DIP starts fitting the noise. ``weight_prior`` with ``prior_weight`` > 0 adds the learned
    regularisation (``fit_dip_prior``). Restarts draw fresh initial weights; the restart with the
    lowest objective is kept. ``InversionResult.z`` holds the kept flat weights, ``loss`` its data term.
    """
    for attr in ("functional_forward", "flat_init", "output_shape"):
        if not hasattr(network, attr):
            raise InputError(f"dip needs a DeepImagePrior-like network (with {attr}), got {type(network).__name__}")
    operator = check_operator(tuple(network.output_shape), y, operator, loss, "the network")
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    if tv_weight < 0 or prior_weight < 0:
        raise InputError(f"tv_weight and prior_weight must be >= 0, got {tv_weight}, {prior_weight}")
    if prior_weight > 0 and weight_prior is None:
        raise InputError("prior_weight > 0 needs a weight_prior (fit one with fit_dip_prior)")
    device, dtype = device_dtype(network)
    y = y.to(device=device, dtype=dtype)
    n = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    w0 = network.flat_init(restarts, gen)
    w0 = w0[None].expand(n, *w0.shape).reshape(n * restarts, -1)
    decode = torch.func.vmap(network.functional_forward)
    penalties = [TotalVariation(tv_weight)] if tv_weight else []
    use_prior = weight_prior is not None and prior_weight > 0
    if use_prior:
        penalties.append(_WeightPenalty(weight_prior, prior_weight))  # type: ignore[arg-type]
    if stop_at is not None:
        stop_at = torch.as_tensor(stop_at, dtype=dtype, device=device).expand(n).repeat_interleave(restarts)
    d = descend(w0, decode, DataTerm(y.repeat_interleave(restarts, 0), operator, loss), penalties=penalties,
                steps=steps, lr=lr, tol=tol, patience=patience, stop_at=stop_at, progress=progress, desc="dip")
    best, idx = pick_best(d.objective, n, restarts)
    w = d.variables[idx]
    with torch.no_grad():
        x = decode(w)
    hist = d.history.view(d.history.shape[0], n, restarts).min(2).values if d.history.numel() else d.history.view(0, n)
    return InversionResult(z=w, x=x, loss=d.data[idx], objective=d.objective[idx], history=hist,
                           generator_evals=d.evaluations.view(n, restarts).sum(1).to(dtype), restart=best,
                           diverged=d.diverged.view(n, restarts).any(1),
                           info={"method": "dip", "num_weights": int(w.shape[1]), "tv_weight": tv_weight,
                                 "prior_weight": prior_weight if use_prior else 0.0})
