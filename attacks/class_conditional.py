"""Label-preserving on-manifold attacks on a class-conditional generator (Stutz, Hein, Schiele, CVPR 2019).

Each sample is attacked in the range of *its own class's* generator: the adversarial image is
``G(z', y)`` with ``z'`` near the projection ``ẑ`` of ``x`` onto class ``y``'s range, so with
class-specific generators (``ClassVAEs``) it is an
image of class ``y`` by construction and the model's disagreement is a generalisation error, not a
label change.

- ``ClassConditionalLatentPGD`` — latent PGD, latent-space ℓ∞ budget η (Stutz et al.: η = 0.3, 40
  iterations) or the image-space ℓ2 budget of Ilyas et al. 2017;
- ``ClassConditionalOverpowered`` — the overpowered attack (Ilyas et al. 2017) inside one class's range.

Both group the batch by label and run the unconditional attack once per class present (a loop over
classes, never over images). Success is scored on the attacked model, as everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from manifold_defense.attacks.base import Attack, Crafted, as_crafted
from manifold_defense.attacks.on_manifold import LatentPGD, OverpoweredAttack
from manifold_defense.defended import ProjectionConfig
from manifold_defense.generators.class_conditional import class_groups
from manifold_defense.protocols import ClassConditional, Generator, describe
from manifold_defense.validation import InputError

__all__ = ["PerClassAttack", "ClassConditionalLatentPGD", "ClassConditionalOverpowered", "check_class_conditional",
           "REFERENCE_PROJECTION"]

#: ẑ(x) on the true class's range: its encoder's code refined by 50 Adam steps (the reference image G(ẑ, y)
#: the budget is centred on; a class model's range is small, so one start suffices)
REFERENCE_PROJECTION = ProjectionConfig(steps=50, restarts=1, init="encoder", prune_after=0)


def check_class_conditional(generator: object) -> None:
    """``generator`` must be class-conditional (an unconditional one has no range per class)."""
    if not isinstance(generator, ClassConditional):
        hint = " (an unconditional Generator: use LatentPGD / OverpoweredAttack)" if isinstance(generator, Generator) else ""
        raise InputError(f"{type(generator).__name__} is not class-conditional (needs num_classes and condition(label);"
                         f" it meets: {describe(generator)}){hint}")


class PerClassAttack(Attack):
    """Run ``attack_class(generator.condition(c), **options)`` on the samples labelled ``c``, for every class."""

    attack_class: type[Attack]
    #: 1: the per-class searches' own verdicts kept; gradients through a defended model whose generator is
    #: not the class model (its projection moves G(z, c)), not through its bare classifier
    revision = 1

    def __init__(self, generator: nn.Module, **options: Any) -> None:
        check_class_conditional(generator)
        options.setdefault("projection", REFERENCE_PROJECTION)
        self.generator, self.options = generator, options
        probe = self.attack_class(generator.condition(0), **options)  # validates the options once
        self.norm = probe.norm

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """The per-class attack on each class's rows, put back in the batch's order."""
        num = getattr(model, "num_classes", None)
        if num is not None and num != self.generator.num_classes:
            raise InputError(f"the model has {num} classes but the generator {self.generator.num_classes}")
        parts: dict[str, torch.Tensor] = {}
        reached = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for c, rows in class_groups(y.to(x.device), self.generator.num_classes):
            attack = self.attack_class(self.generator.condition(c), **self.options)
            found = as_crafted(attack.run(model, x[rows], y[rows], epsilon))
            for name in ("adversarial", "reference", "norms"):
                value = getattr(found, name)
                if value is not None:
                    parts.setdefault(name, value.new_empty(len(x), *value.shape[1:]))[rows] = value.detach()
            if found.reached is not None:  # the search's own verdicts on the attacked model
                reached[rows] = found.reached.to(x.device)
        return Crafted(parts["adversarial"], parts.get("reference"), parts.get("norms"), reached)


class ClassConditionalLatentPGD(PerClassAttack):
    """Latent PGD in the true class's latent space (Stutz et al. 2019): ``budget="latent_linf"`` (default,
    ``‖z' − ẑ‖∞ ≤ η``, 40 sign steps of 2.5 η / 40) or ``"image_l2"``; keyword options as
    ``LatentPGD``. ``epsilon`` is η."""

    attack_class = LatentPGD

    def __init__(self, generator: nn.Module, *, steps: int = 40, budget: str = "latent_linf", **options: Any) -> None:
        super().__init__(generator, steps=steps, budget=budget, **options)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> Crafted:
        """As ``PerClassAttack.run``; a budget η ≤ 0 is refused (no latent ball to search)."""
        if not epsilon > 0:
            raise InputError(f"the on-manifold budget η must be > 0, got {epsilon}")
        return super().run(model, x, y, epsilon)


class ClassConditionalOverpowered(PerClassAttack):
    """The overpowered attack (Ilyas et al. 2017) with both points in the true class's range; options as
    ``OverpoweredAttack``. ``epsilon`` is the image-space η."""

    attack_class = OverpoweredAttack
