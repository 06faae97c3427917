"""Named, versioned attack suites: what ``evaluate`` runs unless told otherwise.

Like AutoAttack's ``version`` (Croce & Hein 2020, ``run_standard_evaluation``), a suite is a fixed, ordered
list of attacks per threat model, and its name and version go into the run's fingerprint and its report.
Unlike AutoAttack's static models, the model here has a projection in the loop, so the suites hold the
adaptive attacks that find the most on projection defenses (BPDA + EOT, the implicit derivative, latent
reparameterisation; Athalye et al. 2018), and every run ends in an *escalation*: the threat's most
effective attack, at twice, four times … its iterations and with fresh restarts, on the samples still
standing, until a doubling breaks none (Carlini et al. 2019, "On Evaluating Adversarial Robustness": more
iterations and restarts must stop helping).

- ``standard`` — the strongest we have per threat model, for deterministic projections, as a *survivor
  cascade*: within a threat model each attack runs only on the samples that every earlier one failed to
  break, cheap strong attacks first (a transfer from the undefended classifier costs one projection of the
  attacked model per sample).
- ``rand`` — the same for stochastic projections: EOT in every gradient,
  and every answer counted over ``attempts`` fresh draws (a sample is broken if any draw misclassifies it).
- ``columns`` — the per-attack table of papers: every attack on every sample (its own robust accuracy per
  column), then the same escalation on the worst case's survivors.

Why these attacks, in this order (per-sample records of ``benchmarks/defense_mnist.py``, 500 images behind
the default projection on mnist-vae20 and 100 on mnist-sngan-inv with Defense-GAN's and the default
projection): FGSM transfer costs one projection and breaks 35–65 %; BPDA + EOT is the cheap iterative
attack and alone breaks 7 samples no other attack did on the sngan Defense-GAN row; the implicit-gradient PGD
broke 104 samples nothing else did on mnist-vae20. AutoAttack 'rand' added 2 unique breaks on two rows, and in
the cascade (standard v2, ``evaluation_speed/default_vae20/standard-v2``) it broke 28 of BPDA's 209 survivors
for 298 s, and implicit PGD 103 of the rest; in v3 implicit PGD alone broke 129 of the same 209 and the worst
case came out the same (.076 in ℓ∞, 1200 s wall instead of 1484): about one break per 300 s, more CPU per
break than any escalation round, so ``standard`` v3 left it out. v4 puts it back: on the sngan Defense-GAN
row it broke 2 of the 14 ℓ∞ samples that FGSM, BPDA and implicit PGD of v3 had left (418 s wall), breaks no
other attack had found by then. v4 ran it before implicit PGD; v5 runs it after, where it showed that worth: in
v4 on mnist-vae20 (``evaluation_speed/default_vae20/standard-v4``) it broke 28 of 209 (248 s, 1.2 s per sample)
and implicit PGD then 103 of 181 (212 s, the same cost per sample, four times the share): the strong attack
of the two goes first and the weak one takes what is left. v3 also dropped PGD run on the surrogate alone
and transferred (``pgd_*_surrogate``, for defenses whose attacks craft on a cheaper projection): scored once
per sample, it still ran all its steps on every sample, 27 s per sample for 8 of 36 broken on the sngan
Defense-GAN row (``defense_gan_sngan/standard-v2``), where BPDA scored on the attacked model every 5 steps
costs 24 s per sample and broke 86 of 100 in the per-attack run.
Latent reparameterisation in ℓ∞ broke no sample that another attack missed on any of the four rows, at up to
38,433 s (of about 143,000 s) on the sngan Defense-GAN row: it is in ``columns`` only. In ℓ2 it added one
sample on each sngan row and stays, last. ``benchmarks/evaluation_speed.py`` reports each attack's marginal
breaks and seconds in the cascade, so the order stays justified by data.

v6: on an *undefended* model (an adversarially trained classifier evaluated alone) v5 read far above AutoAttack.
On the ℓ∞-trained ``trades_linf_ft`` (``benchmarks/robust_mnist.py``, first 1,000 test images) v5 left ℓ∞ 0.3 at
.858 and ℓ2 2.0 at .710, AutoAttack 'standard' at .834 and .261 — PGD on the cross-entropy, however long, does not
find what FAB and Square find on a model whose ℓ∞ training flattened its gradients (Schott et al. 2019 report the
same for ℓ∞-trained MNIST models at ℓ2). Of 60 samples v5 left at ℓ2 that AutoAttack broke, FAB-T alone broke 58
(32 CPU s), Square 34, APGD-T 11, APGD-CE 3; at ℓ∞, APGD-CE at 100 iterations broke 18 of the 24 (v5's AutoAttack
'rand' ran 25). So on an undefended model the cascade runs AutoAttack 'standard' at its published budget in both
threat models, before 'rand' (v7 keeps 'rand' after it, on what it leaves: v6 had replaced it). Behind a
projection, where each of Square's 5,000 queries is a projection, it is not in the suite (unmeasured there; the
decision-based sanity check stands for the query attacks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from torch import nn

from manifold_defense.attacks.base import Attack
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval.registry import AttackBudget, build_attack
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.validation import InputError

__all__ = ["Stage", "Suite", "SUITES", "Plan", "build_plan", "escalated_attack", "default_epsilons", "get_suite"]


@dataclass(frozen=True)
class Stage:
    """One attack of a suite: a registered attack name and when it applies (``when``: 'generator' — a generator
    is known; 'dead_zone' — a projection with ILO's dead zone, whose own gradient is masked; 'surrogate' — adaptive
    attacks craft on a surrogate projection; 'defended' / 'undefended' — the model does / does not run a generator
    in its forward (a ``DefendedModel``, analysis by synthesis); None — always).
    ``smooth_surrogate``: craft on the generator's smooth default projection (a dead zone masks its own)."""

    attack: str
    when: str | None = None
    smooth_surrogate: bool = False


@dataclass(frozen=True)
class Suite:
    """A named, versioned list of attacks per threat model (see the module docstring)."""

    name: str
    version: int
    stages: Mapping[str, tuple[Stage, ...]]
    cascade: bool = True
    escalation_rounds: int = 3
    attempts: int = 1
    for_stochastic: bool = False
    description: str = ""

    def fingerprint(self) -> dict:
        """What identifies the suite's attacks and rules in a run's fingerprint."""
        return {"name": self.name, "version": self.version, "cascade": self.cascade,
                "escalation_rounds": self.escalation_rounds}


_LINF = (Stage("fgsm_transfer"), Stage("pgd_linf"), Stage("pgd_linf_implicit"),
         Stage("range_target_pgd_linf", when="dead_zone", smooth_surrogate=True))
#: after implicit PGD: AutoAttack 'standard' at its published budget on an undefended model (v6), then AutoAttack
#: 'rand' (APGD with EOT over a stochastic variant of the projection; v5) on every model — on an undefended one it
#: takes the few samples 'standard' left, so no sample v5 broke can survive v7 (v6 dropped it there)
_AA_LINF = (Stage("autoattack_linf", when="undefended"), Stage("autoattack_rand_linf"))
_LINF_RAND = _LINF[:3] + _AA_LINF + _LINF[3:]
#: the per-attack table keeps v4's order (a column's number does not depend on it)
_LINF_COLUMNS = _LINF[:2] + _AA_LINF + (Stage("pgd_linf_implicit"),
                                        Stage("latent_reparam_linf", when="generator")) + _LINF[3:]
_L2 = (Stage("fgm_transfer"), Stage("pgd_l2"), Stage("pgd_l2_implicit"), Stage("autoattack_l2", when="undefended"),
       Stage("latent_reparam_l2", when="generator"))
_ON = (Stage("on_manifold", when="generator"),)

SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("standard", 7, {"linf": _LINF_RAND, "l2": _L2, "on_manifold": _ON},
          description="the strongest attacks per threat model as a survivor cascade, then escalation to convergence "
                      "(deterministic projections)"),
    Suite("rand", 7, {"linf": _LINF_RAND, "l2": _L2, "on_manifold": _ON}, attempts=5, for_stochastic=True,
          description="the standard cascade on a stochastic projection, with AutoAttack 'rand': EOT gradients, "
                      "every answer over 5 draws"),
    Suite("columns", 6, {"linf": _LINF_COLUMNS, "l2": _L2, "on_manifold": _ON}, cascade=False,
          description="every attack on every sample (a per-attack table), then escalation on the worst case's "
                      "survivors"),
]}

#: default ε per threat model, by image side: the threat models of the MNIST literature (Madry et al. 2018:
#: ℓ∞ 0.3; Athalye et al. 2018 on Defense-GAN: ℓ2 3.8 (0.005 per pixel mean squared); Ilyas et al. 2017's
#: on-manifold η 1.5), the digits demo's (8×8 images, a quarter of MNIST's scale in ℓ2), CIFAR-10's
_EPSILONS = {8: {"linf": (0.3,), "l2": (1.0,), "on_manifold": (1.0,)},
             28: {"linf": (0.3,), "l2": (3.8,), "on_manifold": (1.5,)},
             32: {"linf": (8 / 255,), "l2": (0.5,), "on_manifold": (1.0,)}}


def default_epsilons(input_shape: Sequence[int]) -> dict[str, tuple[float, ...]]:
    """The default ε per threat model for images of ``input_shape`` (see ``_EPSILONS``)."""
    side = int(input_shape[-1])
    if side not in _EPSILONS:
        raise InputError(f"no default epsilons for {side}×{side} images; give epsilons={{'linf': [...], ...}}")
    return dict(_EPSILONS[side])


def get_suite(name: str | Suite) -> Suite:
    """A suite by name ('standard', 'rand', 'columns') or the suite itself."""
    if isinstance(name, Suite):
        return name
    if name not in SUITES:
        raise InputError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return SUITES[name]


#: BPDA on the attacked model itself (no surrogate, a deterministic projection) takes one draw of the model's own
#: projection, not EOT over a stochastic variant of it: measured on default_vae20 (100 FGSM-transfer survivors
#: each), ℓ∞ 0.3 36 vs 35 broken and ℓ2 3.8 69 vs 67, at a third of the cost. Behind a surrogate (and in ``rand``)
#: the stochastic draws stay: Defense-GAN's own restarts are random.
_BPDA = ("pgd_linf", "pgd_l2")

_SCALED = ("steps", "n_iter")


def escalated_attack(attack: Attack, factor: int, round_: int) -> Attack:
    """A copy of ``attack`` with ``factor`` × its iterations (``steps``, ``n_iter``, nested attacks' too) and
    fresh restarts (every ``seed`` moved by ``round_``: new random starts, a new pool of range starts), so each
    escalation round is a new search at twice the length of the one before, not a rerun of it. Behind a
    surrogate (``check_every`` > 1) the attacked model is asked as many times per search as at the base budget
    (every ``factor × check_every`` steps), and still at every step where the surrogate is already fooled; a
    warm-started attack (``warm_steps``) keeps its cadence of cold projections."""
    out = copy.copy(attack)
    for name, value in vars(attack).items():
        # a warm-started attack's check_every is how often it crafts on (and is scored by) the cold projection:
        # the warm projections between drift further the longer the gap, so that cadence stays
        surrogate_cadence = name == "check_every" and value > 1 and not getattr(attack, "warm_steps", 0)
        if (name in _SCALED or surrogate_cadence) and isinstance(value, int) and not isinstance(value, bool):
            setattr(out, name, value * factor)
        elif name == "seed" and isinstance(value, int):
            setattr(out, name, value + 1000 * round_)
        elif isinstance(value, Attack):
            setattr(out, name, escalated_attack(value, factor, round_))
    return out


@dataclass
class Plan:
    """What one evaluation runs: the suite (None: attacks the caller chose), its attacks in order, whether they
    run as a survivor cascade and how many escalation rounds may follow."""

    suite: Suite | None
    specs: list[AttackSpec]
    cascade: bool
    escalation_rounds: int
    attempts: int = 1
    #: attack name → how the suite built it (registry name, surrogate), for the report
    origin: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """The suite part of the run's fingerprint (a suite changed between runs into one folder is refused)."""
        if self.suite is None:
            return {"name": "custom", "cascade": self.cascade, "escalation_rounds": self.escalation_rounds}
        return self.suite.fingerprint()

    def groups(self) -> list[tuple[str, float, list[AttackSpec]]]:
        """``(threat, ε, attacks)`` in run order: threats as the attacks first name them, ε ascending."""
        threats = list(dict.fromkeys(s.threat for s in self.specs))
        out = []
        for t in threats:
            for eps in sorted({float(e) for s in self.specs if s.threat == t for e in s.epsilons}):
                out.append((t, eps, [s for s in self.specs if s.threat == t and eps in map(float, s.epsilons)]))
        return out

    def escalation(self, spec: AttackSpec, round_: int) -> AttackSpec:
        """Round ``round_`` (1, 2 …) of the escalation of ``spec``: ``2**round_`` × its iterations, fresh restarts."""
        factor = 2 ** round_
        return AttackSpec(f"{spec.name}×{factor}", escalated_attack(spec.attack, factor, round_), list(spec.epsilons),
                          spec.threat, iterative=True, escalates=spec.name, round=round_)


def build_plan(suite: "str | Suite | Plan | None", model: nn.Module, *, attacks: Sequence[AttackSpec] | None = None,
               classifier: nn.Module | None = None, generator: nn.Module | None = None,
               surrogate: ProjectionConfig | None = None, budget: AttackBudget | None = None,
               epsilons: Mapping[str, Sequence[float]] | None = None, threats: Sequence[str] | None = None,
               escalation_rounds: int | None = None) -> Plan:
    """The ``Plan`` of a suite on ``model`` (or of the caller's ``attacks``, run as columns without escalation;
    a ``Plan`` is returned as it is).

    ``classifier``: the undefended source of the transfer attack (default: the defended model's own classifier,
    or ``model``); ``generator``: the range the latent and on-manifold attacks search (default: the defended
    model's); ``surrogate``: the projection adaptive attacks craft on (default: the attacked model's own);
    ``epsilons``: ε per threat model (default ``default_epsilons``); ``threats``: a subset of the suite's."""
    if isinstance(suite, Plan):
        if attacks is not None:
            raise InputError("give a suite or attacks, not both")
        return suite
    if attacks is not None:
        if suite is not None:
            raise InputError("give a suite or attacks, not both")
        if not attacks:
            raise InputError("give at least one attack")
        return Plan(None, list(attacks), cascade=False, escalation_rounds=escalation_rounds or 0)
    s = get_suite(suite or "standard")
    defended = isinstance(model, DefendedModel)
    if not defended and any(isinstance(m, DefendedModel) for m in model.modules()):
        # the adaptive attacks (implicit gradients, latent, transfer) need the projection: a suite on the wrapper
        # would run the static-model stages only and read the defense as far more robust than it is
        raise InputError(f"a DefendedModel inside {type(model).__name__}: a suite's adaptive attacks need the "
                         "DefendedModel itself; fold the wrapper's work into its classifier, or pass attacks=")
    stochastic = defended and model.projection.stochastic
    if stochastic and not s.for_stochastic:
        raise InputError(f"suite {s.name!r} is for deterministic projections; this model's projection is stochastic: "
                         "use suite 'rand' (EOT and N-attempt numbers)")
    classifier = classifier if classifier is not None else (model.classifier if defended else model)
    generator = generator if generator is not None else (model.generator if defended else None)
    eps = default_epsilons(getattr(model, "input_shape", (1, 28, 28)))
    if epsilons:
        unknown = set(epsilons) - set(s.stages)
        if unknown:
            raise InputError(f"suite {s.name!r} has no threat model {sorted(unknown)}; it has {', '.join(s.stages)}")
        eps |= {t: tuple(float(e) for e in v) for t, v in epsilons.items()}
    chosen = list(threats) if threats is not None else list(s.stages)
    bad = [t for t in chosen if t not in s.stages]
    if bad:
        raise InputError(f"suite {s.name!r} has no threat model {bad}; it has {', '.join(s.stages)}")
    conditions = {None: True, "generator": generator is not None, "surrogate": surrogate is not None,
                  "dead_zone": defended and model.projection.dead_zone > 0}
    # a generator in the model's forward (a projection, analysis by synthesis): every query is an optimisation
    conditions["defended"] = defended or getattr(model, "generator", None) is not None
    conditions["undefended"] = not conditions["defended"]
    specs, origin = [], {}
    for t in chosen:
        if not eps.get(t) or min(eps[t]) <= 0:
            raise InputError(f"threat {t}: epsilons must be > 0, got {list(eps.get(t, ()))}")
        for stage in s.stages[t]:
            if not conditions[stage.when]:
                continue
            crafted = ProjectionConfig.for_generator(generator) if stage.smooth_surrogate else surrogate
            here = budget or AttackBudget()
            if stage.attack in _BPDA and crafted is None and not s.for_stochastic:
                here = replace(here, eot=1)
            if stage.when == "undefended" and stage.attack.startswith("autoattack"):
                # a static model: AutoAttack at its published budget, the number every reader compares with
                # (a forward pass is cheap here, not a projection)
                here = replace(here, autoattack_iter=max(here.autoattack_iter, AttackBudget.full().autoattack_iter))
            specs.append(build_attack(stage.attack, list(eps[t]), classifier=classifier, generator=generator,
                                      surrogate=crafted, budget=here))
            origin[stage.attack] = "smooth default projection" if stage.smooth_surrogate else ""
    if not specs:
        raise InputError(f"suite {s.name!r} has no attack for this model and threats {chosen}")
    rounds = s.escalation_rounds if escalation_rounds is None else int(escalation_rounds)
    if rounds < 0:
        raise InputError(f"escalation_rounds must be >= 0, got {rounds}")
    return Plan(s, specs, cascade=s.cascade, escalation_rounds=rounds, attempts=s.attempts, origin=origin)
