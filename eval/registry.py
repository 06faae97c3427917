"""The registry of named attacks, with their threat models, default budgets and ε — the one list the
``evaluate`` CLI, the demo and every benchmark build their attacks from.

``build_attack("pgd_linf", [0.3], classifier=..., generator=..., budget=AttackBudget.quick())`` → an
``AttackSpec``. Every gradient attack on a
``DefendedModel`` is adaptive (BPDA, optionally EOT, on the model's own
projection or a named surrogate; the unrolled projection; latent reparameterisation), and every result
is scored on the attacked model itself. An unknown name is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

from torch import nn

from manifold_defense.attacks import (
    BPDA,
    FGSM,
    Attack,
    ImplicitPGD,
    AutoAttack,
    CarliniWagnerL2,
    ClassConditionalLatentPGD,
    ClassConditionalOverpowered,
    LatentPGD,
    L2PGD,
    LatentReparameterization,
    OverpoweredAttack,
    RangeTargetAttack,
    RangeTargetPGD,
    SurrogateTransfer,
    TransferAttack,
    UnrolledPGD,
)
from manifold_defense.defended import ProjectionConfig
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.validation import InputError

__all__ = ["ATTACKS", "RegisteredAttack", "AttackBudget", "build_attack", "parse_attack"]


@dataclass(frozen=True)
class AttackBudget:
    """Iteration budgets of the registered attacks. The defaults are the benchmarks'; ``quick`` is for
    smoke runs, ``demo`` for the digits demo."""

    pgd_steps: int = 40
    eot: int = 2
    restarts: int = 1
    unroll_steps: int = 20
    latent_steps: int = 100  # latent reparameterisation, per round
    latent_restarts: int = 2
    on_manifold_steps: int = 100
    on_manifold_stepsize: float = 0.1
    overpowered_steps: int = 100
    overpowered_rounds: int = 3
    autoattack_iter: int = 25
    autoattack_eot: int = 2
    cw_steps: int = 100
    range_restarts: int = 3  # implicit PGD: restarts from the nearest other-class points of the range
    on_manifold_cc_steps: int = 40  # class-conditional latent PGD (Stutz et al. 2019: 40 iterations)
    range_targets: int = 16  # range-target attack: other-class targets per sample (its restarts)
    #: with a surrogate projection (crafting on a cheaper one than the attacked model's), score every unbroken
    #: iterate on the attacked model every this many steps (and in between where the surrogate already fails)
    surrogate_check_every: int = 5

    def __post_init__(self) -> None:
        bad = [f.name for f in fields(self) if not getattr(self, f.name) > (-1 if f.name == "range_restarts" else 0)]
        if bad:
            raise InputError(f"attack budgets must be > 0 (range_restarts >= 0), got {', '.join(f'{k}={getattr(self, k)}' for k in bad)}")

    @classmethod
    def quick(cls) -> "AttackBudget":
        """Small budgets for smoke runs (results are not publishable)."""
        return cls(pgd_steps=10, eot=1, unroll_steps=10, latent_steps=50, on_manifold_steps=50, overpowered_steps=50,
                   on_manifold_cc_steps=20,
                   autoattack_iter=10, autoattack_eot=1, cw_steps=30, range_restarts=1, range_targets=4)

    @classmethod
    def full(cls) -> "AttackBudget":
        """AutoAttack's published budget (Croce & Hein 2020: 100 APGD iterations; EOT 20 for 'rand') and
        matching budgets for the others: for the numbers a paper reports (slow on a CPU: run it on a subset
        and state n)."""
        return cls(pgd_steps=100, eot=20, restarts=2, unroll_steps=40, latent_steps=200, latent_restarts=4,
                   on_manifold_steps=200, on_manifold_cc_steps=200, overpowered_steps=200, autoattack_iter=100, autoattack_eot=20, cw_steps=1000,
                   range_restarts=8, range_targets=32)

    @classmethod
    def named(cls, name: str) -> "AttackBudget":
        """'quick', 'default' or 'full'."""
        presets = {"quick": cls.quick, "default": cls, "full": cls.full, "demo": cls.demo}
        if name not in presets:
            raise InputError(f"unknown budget {name!r}; use quick, default or full")
        return presets[name]()

    @classmethod
    def demo(cls) -> "AttackBudget":
        """The digits demo's budgets (the whole demo, 100 digits through the `standard` suite v5 in two worker
        processes: 180–194 s on two CPU cores in three runs, measured 2026-12-06; v4 in one process: 323 s)."""
        return cls(pgd_steps=20, eot=1, latent_steps=60, on_manifold_steps=20, on_manifold_stepsize=0.25)


@dataclass(frozen=True)
class _Context:
    budget: AttackBudget
    threat: str
    classifier: nn.Module | None
    generator: nn.Module | None
    surrogate: ProjectionConfig | None


@dataclass(frozen=True)
class RegisteredAttack:
    """A named attack: its threat model ('linf', 'l2', 'on_manifold'), default ε, whether it is iterative
    (for the iterative-beats-single-step check), what it needs (``classifier``: the undefended source of a
    transfer attack; ``generator``), a one-line description, and how to build it from a budget."""

    name: str
    threat: str
    epsilons: tuple[float, ...]
    iterative: bool
    description: str
    build: Callable[[_Context], Attack]
    needs: tuple[str, ...] = ()


def _transfer(c: _Context) -> Attack:
    return TransferAttack(c.classifier, FGSM())


def _fgm_transfer(c: _Context) -> Attack:
    # one ℓ2 step of size ε along the undefended classifier's gradient: on the fgsm survivors of
    # default_vae20 it broke 28 of 100 at ℓ2 3.8, where 40 steps of ℓ2 PGD transferred broke 6 (overfitting)
    return TransferAttack(c.classifier, L2PGD(steps=1, rel_stepsize=1.0, random_start=False))


def _surrogate_transfer(c: _Context) -> Attack:
    if c.surrogate is None:
        raise InputError(f"{c.threat} surrogate transfer needs surrogate=: the projection to craft on")
    b = c.budget
    return SurrogateTransfer(BPDA(norm=c.threat, steps=b.pgd_steps, eot=b.eot, restarts=b.restarts,
                                  projection=c.surrogate))


def _check_every(c: _Context) -> int:
    """Every step on the attacked model itself; every few behind a (much cheaper) surrogate projection."""
    return 1 if c.surrogate is None else c.budget.surrogate_check_every


def _bpda(c: _Context) -> Attack:
    b = c.budget
    return BPDA(norm=c.threat, steps=b.pgd_steps, eot=b.eot, restarts=b.restarts, projection=c.surrogate,
                check_every=_check_every(c))


def _implicit(c: _Context) -> Attack:
    # a deterministic projection needs no EOT; a stochastic one gets the budget's draws
    return ImplicitPGD(norm=c.threat, steps=c.budget.pgd_steps, eot=c.budget.eot, restarts=c.budget.restarts,
                       projection=c.surrogate, loss="margin", range_restarts=c.budget.range_restarts,
                       check_every=_check_every(c))


def _unrolled(c: _Context) -> Attack:
    return UnrolledPGD(norm=c.threat, steps=c.budget.pgd_steps, unroll_steps=c.budget.unroll_steps)


def _reparam(c: _Context) -> Attack:
    b = c.budget
    return LatentReparameterization(c.generator, norm=c.threat, steps=b.latent_steps, restarts=b.latent_restarts,
                                    projection=c.surrogate, check_every=_check_every(c))


def _on_manifold(c: _Context) -> Attack:
    b = c.budget
    return LatentPGD(c.generator, steps=b.on_manifold_steps, latent_stepsize=b.on_manifold_stepsize,
                     projection=c.surrogate, check_every=_check_every(c))


def _overpowered(c: _Context) -> Attack:
    b = c.budget
    return OverpoweredAttack(c.generator, steps=b.overpowered_steps, rounds=b.overpowered_rounds, projection=c.surrogate,
                             check_every=_check_every(c))


def _on_manifold_cc(c: _Context) -> Attack:
    return ClassConditionalLatentPGD(c.generator, steps=c.budget.on_manifold_cc_steps, check_every=_check_every(c))


def _overpowered_cc(c: _Context) -> Attack:
    b = c.budget
    return ClassConditionalOverpowered(c.generator, steps=b.overpowered_steps, rounds=b.overpowered_rounds,
                                       check_every=_check_every(c))


def _autoattack(rand: bool) -> Callable[[_Context], Attack]:
    def build(c: _Context) -> Attack:
        b = c.budget
        return AutoAttack(norm=c.threat, version="rand" if rand else "standard", n_iter=b.autoattack_iter,
                          eot_iter=b.autoattack_eot if rand else None, projection=c.surrogate, stochastic=rand)
    return build


def _apgd_implicit(c: _Context) -> Attack:
    # APGD (Croce & Hein 2020: step-size adaptation, momentum; CE, then the DLR loss) on the implicit derivative of
    # the projection; EOT only on a stochastic projection. Not in a suite: on default_vae20's 79 survivors of
    # implicit PGD it broke 30 for 311 CPU s where implicit PGD at twice its steps broke 24 of 78 for 233 s
    b = c.budget
    return AutoAttack(norm=c.threat, version="custom", attacks=["apgd-ce", "apgd-dlr"], n_iter=b.pgd_steps,
                      eot_iter=b.eot, projection=c.surrogate, gradient="implicit")


def _range_target(c: _Context) -> Attack:
    return RangeTargetAttack(c.generator, restarts=c.budget.range_targets, steps=c.budget.latent_steps)


def _range_target_pgd(c: _Context) -> Attack:
    b = c.budget  # PGD starts from as many of the targets' inputs as it has range restarts
    return RangeTargetPGD(c.generator, targets=b.range_targets, latent_steps=b.latent_steps, steps=b.pgd_steps,
                          restarts=b.restarts, range_restarts=b.range_restarts, target_starts=b.range_restarts,
                          projection=c.surrogate, check_every=_check_every(c))


def _cw(c: _Context) -> Attack:
    return CarliniWagnerL2(steps=c.budget.cw_steps)


ATTACKS: dict[str, RegisteredAttack] = {a.name: a for a in [
    RegisteredAttack("fgsm", "linf", (0.1, 0.2, 0.3), False, "FGSM on the attacked model (BPDA gradient on a defense)",
                     lambda c: FGSM()),
    RegisteredAttack("fgsm_transfer", "linf", (0.3,), False,
                     "FGSM crafted on the undefended classifier (Defense-GAN protocol)", _transfer, ("classifier",)),
    RegisteredAttack("fgm_transfer", "l2", (3.8,), False,
                     "one L2 gradient step crafted on the undefended classifier (FGSM transfer's L2 twin)", _fgm_transfer,
                     ("classifier",)),
    RegisteredAttack("pgd_linf_surrogate", "linf", (0.3,), True,
                     "L-inf BPDA + EOT PGD run on the surrogate projection alone, its inputs scored once on the "
                     "attacked model (needs surrogate=)", _surrogate_transfer, ("surrogate",)),
    RegisteredAttack("pgd_l2_surrogate", "l2", (3.8,), True,
                     "L2 BPDA + EOT PGD run on the surrogate projection alone, scored once on the attacked model "
                     "(needs surrogate=)", _surrogate_transfer, ("surrogate",)),
    RegisteredAttack("pgd_linf", "linf", (0.1, 0.2, 0.3), True, "L-inf PGD, BPDA + EOT", _bpda),
    RegisteredAttack("pgd_l2", "l2", (1.0, 2.0, 3.8), True, "L2 PGD, BPDA + EOT", _bpda),
    RegisteredAttack("pgd_linf_implicit", "linf", (0.3,), True,
                     "L-inf PGD (margin loss) with the implicit derivative of the projection, restarts from the range",
                     _implicit),
    RegisteredAttack("pgd_l2_implicit", "l2", (3.8,), True,
                     "L2 PGD (margin loss) with the implicit derivative of the projection, restarts from the range",
                     _implicit),
    RegisteredAttack("apgd_linf_implicit", "linf", (0.3,), True,
                     "APGD-CE then APGD-DLR (pyautoattack) with the implicit derivative of the projection", _apgd_implicit),
    RegisteredAttack("apgd_l2_implicit", "l2", (3.8,), True,
                     "APGD-CE then APGD-DLR (pyautoattack) with the implicit derivative of the projection", _apgd_implicit),
    RegisteredAttack("unrolled_linf", "linf", (0.3,), True, "L-inf PGD through the unrolled projection", _unrolled),
    RegisteredAttack("unrolled_l2", "l2", (3.8,), True, "L2 PGD through the unrolled projection", _unrolled),
    RegisteredAttack("latent_reparam_l2", "l2", (3.8,), True, "latent reparameterisation (Athalye et al.), L2 ball",
                     _reparam),
    RegisteredAttack("latent_reparam_linf", "linf", (0.3,), True,
                     "latent reparameterisation (Athalye et al.), L-inf ball", _reparam),
    RegisteredAttack("range_target_linf", "linf", (0.3,), True,
                     "L-inf inputs that make another class's range point the projection's best fit, through the "
                     "projection's own loss (dead zone too)", _range_target),
    RegisteredAttack("range_target_pgd_linf", "linf", (0.3,), True,
                     "range_target_linf, then implicit L-inf PGD (margin loss) from its closest inputs on the samples "
                     "it left: one attack as strong as both", _range_target_pgd),
    RegisteredAttack("on_manifold", "on_manifold", (1.5,), True, "latent PGD, ‖G(z') − G(ẑ)‖₂ ≤ η", _on_manifold,
                     ("generator",)),
    RegisteredAttack("overpowered", "on_manifold", (1.5,), True,
                     "overpowered attack (Ilyas et al.), ‖G(z1) − G(z2)‖₂ ≤ η", _overpowered, ("generator",)),
    RegisteredAttack("on_manifold_cc", "on_manifold_cc", (0.3,), True,
                     "label-preserving latent PGD in the true class's generator (Stutz et al.), ‖z' − ẑ‖∞ ≤ η",
                     _on_manifold_cc, ("generator",)),
    RegisteredAttack("overpowered_cc", "on_manifold_cc_l2", (1.5,), True,
                     "overpowered attack inside the true class's generator, ‖G(z1, y) − G(z2, y)‖₂ ≤ η", _overpowered_cc,
                     ("generator",)),
    RegisteredAttack("autoattack_linf", "linf", (0.3,), True, "AutoAttack 'standard', L-inf", _autoattack(False)),
    RegisteredAttack("autoattack_rand_linf", "linf", (0.3,), True,
                     "AutoAttack 'rand' (EOT), L-inf, on the stochastic projection", _autoattack(True)),
    RegisteredAttack("autoattack_l2", "l2", (3.8,), True, "AutoAttack 'standard', L2", _autoattack(False)),
    RegisteredAttack("cw_l2", "l2", (3.8,), True, "Carlini-Wagner L2 (foolbox), BPDA gradient on a defense", _cw),
]}


def build_attack(name: str, epsilons: Sequence[float] | None = None, *, classifier: nn.Module | None = None,
                 generator: nn.Module | None = None, surrogate: ProjectionConfig | None = None,
                 budget: AttackBudget | None = None, label: str | None = None) -> AttackSpec:
    """An ``AttackSpec`` for a registered attack (see ``ATTACKS``).

    ``classifier``: the undefended classifier (source of ``fgsm_transfer``). ``generator``: needed by the
    on-manifold attacks (a class-conditional one by ``on_manifold_cc`` and ``overpowered_cc``) (and latent reparameterisation of an undefended model). ``surrogate``: the
    projection adaptive attacks craft on (default: the attacked model's own). ``label``: the name the
    results are reported under (default ``name``).
    """
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    entry = ATTACKS[name]
    eps = list(entry.epsilons if epsilons is None else epsilons)
    if not eps or min(eps) < 0:
        raise InputError(f"attack {name} needs non-negative epsilons, got {eps}")
    given = {"classifier": classifier, "generator": generator, "surrogate": surrogate}
    missing = [k for k in entry.needs if given[k] is None]
    if missing:
        raise InputError(f"{name} needs {' and '.join(f'{k}=...' for k in missing)} (the {' and '.join(missing)})")
    attack = entry.build(_Context(budget or AttackBudget(), entry.threat, classifier, generator, surrogate))
    return AttackSpec(label or name, attack, eps, entry.threat, iterative=entry.iterative)


def parse_attack(text: str) -> tuple[str, list[float] | None]:
    """``"pgd_linf:0.1,0.3"`` → ``("pgd_linf", [0.1, 0.3])``; ``"pgd_linf"`` → default ε list."""
    name, _, eps = text.partition(":")
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if not eps:
        return name, None
    try:
        return name, [float(e) for e in eps.split(",") if e]
    except ValueError as exc:
        raise InputError(f"cannot parse epsilons in {text!r}; write NAME:EPS1,EPS2") from exc
