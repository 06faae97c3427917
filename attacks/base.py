"""Attack interface: small classes with keyword-only hyperparameters and one typed entry point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from manifold_defense.validation import InputError, check_images, check_labels

__all__ = ["Attack", "AttackResult", "TransferAttack", "perturbation_norm", "predict_labels"]


@dataclass
class AttackResult:
    """Adversarial inputs, per-sample success (the model's prediction differs from the label) and the
    perturbation norm actually used, in the attack's norm."""

    adversarial: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    epsilon: float
    norm: str

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

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


def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted class per input (one forward pass, no gradients)."""
    with torch.no_grad():
        return model(x).argmax(1)


class Attack:
    """Base class. Subclasses set ``norm`` and implement ``run(model, x, y, epsilon) → adversarial`` (or
    ``(adversarial, reference)`` when the ε-ball is centred elsewhere than ``x``, as on the manifold).

    ``attack(model, x, y, epsilon=ε)`` validates the inputs, runs the attack, checks that every
    perturbation is within ε (an attack that overshoots is a bug, so it raises), and reports success
    from one forward pass of the model on the adversarial inputs.
    """

    norm: str = "linf"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The attack itself on validated inputs: adversarial inputs (or, on the manifold, ``(adversarial,
        reference)``); :meth:`__call__` checks the budget and scores them."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float) -> AttackResult:
        if not epsilon >= 0:
            raise InputError(f"epsilon must be >= 0, got {epsilon}")
        check_images(x, getattr(model, "input_shape", None))
        check_labels(y, len(x), getattr(model, "num_classes", None))
        was_training = model.training
        model.eval()
        try:
            out = self.run(model, x.detach(), y, float(epsilon))
        finally:
            model.train(was_training)
        # On-manifold attacks measure ε around a reference point (the projection G(ẑ(x))), not x.
        adv, ref = (out if isinstance(out, tuple) else (out, x))
        adv, ref = adv.detach(), ref.detach()
        norms = perturbation_norm(adv - ref, self.norm)
        tol = 1e-5 * max(1.0, epsilon)
        if bool((norms > epsilon + tol).any()) or float(adv.min()) < -1e-6 or float(adv.max()) > 1 + 1e-6:
            raise AssertionError(f"{type(self).__name__} produced a perturbation of {self.norm} norm "
                                 f"{float(norms.max()):.4g} > ε = {epsilon} or left [0, 1]")
        success = predict_labels(model, adv) != y.to(adv.device)
        return AttackResult(adversarial=adv, success=success.cpu(), norms=norms.cpu(), epsilon=float(epsilon),
                            norm=self.norm)


class TransferAttack(Attack):
    """Craft adversarial inputs with ``attack`` on ``source`` and score them on the attacked model
    (the non-adaptive protocol of Defense-GAN's paper: FGSM on the undefended classifier, fed to the defense)."""

    def __init__(self, source: nn.Module, attack: Attack) -> None:
        self.source, self.attack, self.norm = source, attack, attack.norm

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
        self.source.eval()
        out = self.attack.run(self.source, x, y, epsilon)
        return out[0] if isinstance(out, tuple) else out
