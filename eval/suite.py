"""Named attacks with sensible budgets, shared by the ``evaluate`` CLI and the benchmarks.

``build_attack("pgd_linf", [0.3], classifier=..., generator=...)`` → an :class:`AttackSpec`. Every
gradient attack on a :class:`~manifold_defense.defended.DefendedModel` is adaptive (BPDA, optionally
EOT, on a surrogate projection; the unrolled projection; latent reparameterisation), and every result
is scored on the attacked model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from manifold_defense.attacks import (
    BPDA,
    FGSM,
    AutoAttack,
    CarliniWagnerL2,
    LatentPGD,
    LatentReparameterization,
    OverpoweredAttack,
    TransferAttack,
    UnrolledPGD,
)
from manifold_defense.defended import ProjectionConfig
from manifold_defense.eval.robustness import AttackSpec
from manifold_defense.validation import InputError

__all__ = ["ATTACKS", "AttackBudget", "build_attack", "parse_attack"]

#: name → (threat model, default ε list, iterative, one-line description)
ATTACKS: dict[str, tuple[str, tuple[float, ...], bool, str]] = {
    "fgsm": ("linf", (0.1, 0.2, 0.3), False, "FGSM on the attacked model (BPDA gradient on a defense)"),
    "fgsm_transfer": ("linf", (0.3,), False, "FGSM crafted on the undefended classifier (Defense-GAN protocol)"),
    "pgd_linf": ("linf", (0.1, 0.2, 0.3), True, "L-inf PGD, BPDA + EOT on the surrogate projection"),
    "pgd_l2": ("l2", (1.0, 2.0, 3.8), True, "L2 PGD, BPDA + EOT on the surrogate projection"),
    "unrolled_linf": ("linf", (0.3,), True, "L-inf PGD through the unrolled projection"),
    "unrolled_l2": ("l2", (3.8,), True, "L2 PGD through the unrolled projection"),
    "latent_reparam_l2": ("l2", (3.8,), True, "latent reparameterisation (Athalye et al.), L2 ball"),
    "latent_reparam_linf": ("linf", (0.3,), True, "latent reparameterisation (Athalye et al.), L-inf ball"),
    "on_manifold": ("on_manifold", (1.5,), True, "latent PGD, ‖G(z') − G(ẑ)‖₂ ≤ η"),
    "overpowered": ("on_manifold", (1.5,), True, "overpowered attack (Ilyas et al.), ‖G(z1) − G(z2)‖₂ ≤ η"),
    "autoattack_linf": ("linf", (0.3,), True, "AutoAttack 'standard', L-inf"),
    "autoattack_rand_linf": ("linf", (0.3,), True, "AutoAttack 'rand' (EOT), L-inf, on the stochastic surrogate"),
    "autoattack_l2": ("l2", (3.8,), True, "AutoAttack 'standard', L2"),
    "cw_l2": ("l2", (3.8,), True, "Carlini-Wagner L2 (foolbox), BPDA gradient on a defense"),
}


@dataclass(frozen=True)
class AttackBudget:
    """Iteration budgets. ``quick()`` is for smoke runs and the demo; the defaults are for benchmarks."""

    pgd_steps: int = 40
    eot: int = 2
    restarts: int = 1
    unroll_steps: int = 20
    latent_steps: int = 100
    latent_restarts: int = 2
    autoattack_iter: int = 25
    autoattack_eot: int = 2
    cw_steps: int = 100

    @classmethod
    def quick(cls) -> "AttackBudget":
        return cls(pgd_steps=10, eot=1, unroll_steps=10, latent_steps=50, latent_restarts=2, autoattack_iter=10,
                   autoattack_eot=1, cw_steps=30)


def build_attack(name: str, epsilons: Sequence[float] | None = None, *, classifier: nn.Module | None = None,
                 generator: nn.Module | None = None, surrogate: ProjectionConfig | None = None,
                 budget: AttackBudget | None = None, label: str | None = None) -> AttackSpec:
    """An :class:`AttackSpec` for a named attack (see :data:`ATTACKS`).

    ``classifier``: the undefended classifier (source of ``fgsm_transfer``). ``generator``: needed by the
    on-manifold attacks (and latent reparameterisation of an undefended model). ``surrogate``: the
    projection used while crafting against a defense (default: the attacked model's own).
    """
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    threat, default_eps, iterative, _ = ATTACKS[name]
    eps = list(default_eps if epsilons is None else epsilons)
    if not eps or min(eps) < 0:
        raise InputError(f"attack {name} needs non-negative epsilons, got {eps}")
    b = budget or AttackBudget()
    if name == "fgsm":
        attack = FGSM()
    elif name == "fgsm_transfer":
        if classifier is None:
            raise InputError("fgsm_transfer needs the undefended classifier (classifier=...)")
        attack = TransferAttack(classifier, FGSM())
    elif name in ("pgd_linf", "pgd_l2"):
        attack = BPDA(norm=threat, steps=b.pgd_steps, eot=b.eot, restarts=b.restarts, projection=surrogate)
    elif name in ("unrolled_linf", "unrolled_l2"):
        attack = UnrolledPGD(norm=threat, steps=b.pgd_steps, unroll_steps=b.unroll_steps)
    elif name in ("latent_reparam_l2", "latent_reparam_linf"):
        attack = LatentReparameterization(generator, norm=threat, steps=b.latent_steps, restarts=b.latent_restarts,
                                          projection=surrogate)
    elif name in ("on_manifold", "overpowered"):
        if generator is None:
            raise InputError(f"{name} needs a generator (generator=...)")
        cls = LatentPGD if name == "on_manifold" else OverpoweredAttack
        attack = cls(generator, steps=b.latent_steps, projection=surrogate)
    elif name.startswith("autoattack"):
        rand = "rand" in name
        attack = AutoAttack(norm=threat, version="rand" if rand else "standard", n_iter=b.autoattack_iter,
                            eot_iter=b.autoattack_eot if rand else None, projection=surrogate, stochastic=rand)
    else:
        attack = CarliniWagnerL2(steps=b.cw_steps)
    return AttackSpec(label or name, attack, eps, threat, iterative=iterative)


def parse_attack(text: str) -> tuple[str, list[float] | None]:
    """``"pgd_linf:0.1,0.3"`` → ``("pgd_linf", [0.1, 0.3])``; ``"pgd_linf"`` → default ε list."""
    name, _, eps = text.partition(":")
    if not eps:
        return name, None
    try:
        return name, [float(e) for e in eps.split(",") if e]
    except ValueError as exc:
        raise InputError(f"cannot parse epsilons in {text!r}; write NAME:EPS1,EPS2") from exc
