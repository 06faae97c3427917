"""What an evaluation found: clean and robust accuracy per attack and ε, the worst case per threat model with
intervals that hold at small n, one-attempt and N-attempt numbers for randomised defenses, and — for a suite
— what each attack added (its marginal breaks and seconds) and whether the escalation converged.

An ``Evaluation`` is only ever built from complete records (``Evaluation.from_records``, through
the same walk that decides what a run attacks: ``cascade_state``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from manifold_defense.eval.cascade import CascadeState, cascade_state
from manifold_defense.eval.records import IncompleteEvaluation
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.eval.suites import Plan

__all__ = ["AttackSpec", "Evaluation", "wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (Wilson 1927): inside [0, 1] and honest at
    small n and at 0 or n successes, unlike ``p ± z·SE``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _summary(vals: list[bool]) -> tuple[float, float, int]:
    n = len(vals)
    p = sum(vals) / n if n else float("nan")
    return p, math.sqrt(p * (1 - p) / n) if n else float("nan"), n


@dataclass
class Evaluation:
    """Per-sample outcomes: ``clean[i]`` (correct on the clean input) and ``robust[(name, eps)][i]``, in one
    attempt; ``clean_all``/``robust_all`` hold the N-attempt outcomes (correct in, and not broken by any of,
    ``attempts`` fresh evaluations of a randomised model).

    In a per-attack table (suite ``columns``, or attacks chosen by the caller) ``robust[(name, eps)]`` is that
    attack's own outcome. In a survivor cascade (suite ``standard`` / ``rand``) an attack only ever saw the
    samples every earlier one left, so ``robust[(name, eps)]`` is the robust accuracy *after* it and every
    earlier attack of its threat model, as AutoAttack reports it; an escalation round (``name×2`` …) is always
    read that way. ``stages`` says what each attack added.
    """

    indices: list[int]
    clean: dict[int, bool]
    robust: dict[tuple[str, float], dict[int, bool]]
    threats: dict[str, str]
    iterative: dict[str, bool]
    attempts: int = 1
    clean_all: dict[int, bool] = field(default_factory=dict)
    robust_all: dict[tuple[str, float], dict[int, bool]] = field(default_factory=dict)
    sanity: dict[str, bool | None] = field(default_factory=dict)
    sanity_details: dict[str, str] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    specs: list[AttackSpec] = field(default_factory=list, repr=False)
    #: (attack, ε) → judge → sample → whether that independent judge gives the adversarial input the true label
    agreement: dict[tuple[str, float], dict[str, dict[int, bool]]] = field(default_factory=dict)
    #: (threat, ε) → sample → broken by an attack beside the columns (sanity checks, a subset's): counted as broken
    check_broken: dict[tuple[str, float], dict[int, bool]] = field(default_factory=dict)
    #: the suite that ran (name, version, cascade, escalation rounds); ``{"name": "custom"}`` for chosen attacks
    suite: dict = field(default_factory=dict)
    #: per attack (and escalation round) at each ε, in run order: samples attacked, new breaks, seconds
    stages: list[dict] = field(default_factory=list)
    #: (threat, ε) → True: the last escalation round broke nothing (or nothing was left); False: the rounds ran out
    #: while still breaking (the worst case is an upper bound); None: no escalation ran
    converged: dict[tuple[str, float], bool | None] = field(default_factory=dict)
    #: (threat, ε) → samples no attack of the run broke (the survivors; a sanity check may still break some)
    survivors: dict[tuple[str, float], list[int]] = field(default_factory=dict)
    #: the clean pass's seconds and projected rows
    clean_cost: dict[str, float] = field(default_factory=dict)

    def _table(self, key: tuple[str, float] | None, attempts: int) -> dict[int, bool]:
        if attempts > 1:
            return (self.clean_all or self.clean) if key is None else self.robust_all.get(key, self.robust[key])
        return self.clean if key is None else self.robust[key]

    def accuracy(self, key: tuple[str, float] | None = None, *, attempts: int = 1) -> tuple[float, float, int]:
        """(accuracy, standard error, n) for clean (``key=None``) or one (attack, ε); ``attempts > 1``: N-attempt."""
        return _summary(list(self._table(key, attempts).values()))

    def interval(self, key: tuple[str, float] | None = None, *, attempts: int = 1) -> tuple[float, float]:
        """95 % Wilson interval of ``accuracy``."""
        vals = list(self._table(key, attempts).values())
        return wilson_interval(sum(vals), len(vals))

    def worst_case_samples(self, *, attempts: int = 1) -> dict[tuple[str, float], list[bool]]:
        """Per threat model and ε, per sample: robust only if every attack of that threat at that ε *or any
        smaller ε* failed (an adversarial input within ε' ≤ ε of x is one within ε too), the sanity checks'
        attacks included (``check_broken``)."""
        out = {}
        for threat in sorted(set(self.threats.values())):
            for eps in sorted({e for (a, e) in self.robust if self.threats[a] == threat}):
                keys = [k for k in self.robust if self.threats[k[0]] == threat and k[1] <= eps]
                checks = [v for (t, e), v in self.check_broken.items() if t == threat and e <= eps]
                out[(threat, eps)] = [all(self._table(k, attempts)[i] for k in keys)
                                      and not any(c.get(i, False) for c in checks) for i in self.indices]
        return out

    def add_breaks(self, threat: str, eps: float, idx: Sequence[int], broken: Sequence[bool]) -> int:
        """Count samples an attack beside the columns broke (``check_broken``) in the worst case at ``eps``
        and above; returns how many the worst case had left robust."""
        before = dict(zip(self.indices, self.worst_case_samples().get((threat, float(eps)), [])))
        table = self.check_broken.setdefault((threat, float(eps)), {})
        table.update({i: table.get(i, False) or bool(b) for i, b in zip(idx, broken)})
        return sum(before.get(i, False) and table[i] for i in idx)

    def worst_case(self, *, attempts: int = 1) -> dict[tuple[str, float], tuple[float, float, int]]:
        """Per threat model and ε: (accuracy, SE, n) of the per-sample worst case."""
        return {k: _summary(v) for k, v in self.worst_case_samples(attempts=attempts).items()}

    def _entry(self, vals: list[bool]) -> dict:
        p, se, n = _summary(vals)
        return {"accuracy": p, "stderr": se, "n": n, "ci95": list(wilson_interval(sum(vals), n))}

    def judge_agreement(self) -> dict[str, dict[str, dict]]:
        """Per attack and ε, per judge: how often it gives the adversarial inputs the true label, over the samples
        the attack ran on (``all``) and over the samples it broke (``broken``: the label still held there?)."""
        out: dict[str, dict[str, dict]] = {}
        for (a, e), judges in sorted(self.agreement.items()):
            entry = {}
            for j, v in judges.items():
                ran = [i for i in self.indices if i in v]
                broken = [i for i in ran if self.clean[i] and not self.robust[(a, e)][i]]
                entry[j] = {"all": self._entry([v[i] for i in ran]), "broken": self._entry([v[i] for i in broken])}
            out[f"{a}@{e:g}"] = entry
        return out

    def robustbench(self, dataset: str | None = None) -> list[dict]:
        """RobustBench-style entries, one per ℓ∞/ℓ2 threat model and ε: ``clean_acc``, ``autoattack_acc``
        (when an AutoAttack ran there), the worst case as ``robust_acc``, ``eps`` as a string,
        ``threat_model``, ``dataset``, ``number_forward_passes``."""
        out = []
        for (threat, eps), vals in self.worst_case_samples().items():
            if threat not in ("linf", "l2"):
                continue
            aa = [k for k in self.robust if k[1] == eps and self.threats[k[0]] == threat and "autoattack" in k[0]]
            entry = {"threat_model": {"linf": "Linf", "l2": "L2"}[threat], "eps": f"{eps:g}",
                     "dataset": dataset or self.run.get("data", {}).get("dataset"), "clean_acc": self.accuracy()[0],
                     "robust_acc": sum(vals) / len(vals), "number_forward_passes": 1}
            if aa:
                entry["autoattack_acc"] = min(self.accuracy(k)[0] for k in aa)
            out.append(entry)
        return out

    def to_dict(self) -> dict:
        """The evaluation as JSON-ready numbers: clean, per attack and ε, worst cases (one attempt and N
        attempts), RobustBench fields, sanity verdicts, notes, timings and the run's fingerprint."""
        d = {"n": len(self.indices), "attempts": self.attempts, "suite": self.suite,
             "clean": self._entry(list(self.clean.values())),
             "robust": {f"{a}@{e:g}": self._entry(list(self.robust[(a, e)].values())) for (a, e) in sorted(self.robust)},
             "worst_case": {f"{t}@{e:g}": self._entry(v) for (t, e), v in self.worst_case_samples().items()},
             "sanity": self.sanity, "sanity_details": self.sanity_details, "notes": self.notes,
             "attack_seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "run": self.run,
             "stages": self.stages, "clean_cost": self.clean_cost,
             "converged": {f"{t}@{e:g}": c for (t, e), c in sorted(self.converged.items())},
             "survivors": {f"{t}@{e:g}": v for (t, e), v in sorted(self.survivors.items())}}
        if self.agreement:
            d["judge_agreement"] = self.judge_agreement()
        if self.check_broken:  # counted in worst_case; listed so a reader sees where those breaks came from
            d["broken_by_sanity_checks"] = {f"{t}@{e:g}": sorted(i for i, b in v.items() if b)
                                            for (t, e), v in sorted(self.check_broken.items())}
        if self.attempts > 1:
            d["n_attempts"] = {
                "clean": self._entry(list((self.clean_all or self.clean).values())),
                "robust": {f"{a}@{e:g}": self._entry(list(self._table((a, e), self.attempts).values()))
                           for (a, e) in sorted(self.robust)},
                "worst_case": {f"{t}@{e:g}": self._entry(v)
                               for (t, e), v in self.worst_case_samples(attempts=self.attempts).items()}}
        entries = self.robustbench()
        d["robustbench"] = entries
        if entries:  # the first ℓ∞ (else ℓ2) entry at its largest ε, as RobustBench's top-level fields
            main = max(entries, key=lambda e: (e["threat_model"] == "Linf", float(e["eps"])))
            d.update({k: main[k] for k in ("clean_acc", "robust_acc", "eps", "threat_model", "dataset",
                                            "number_forward_passes")})
            if "autoattack_acc" in main:
                d["autoattack_acc"] = main["autoattack_acc"]
        return d

    @classmethod
    def from_records(cls, records: list[dict], indices: Sequence[int],
                     plan: "Plan | Sequence[tuple[str, float]]", *, attempts: int = 1) -> "Evaluation":
        """The evaluation of ``indices`` under ``plan`` (a ``Plan``, or
        ``(attack, ε)`` pairs: a per-attack table of those records) from records; a sample an attack should have
        attacked without a record is an ``IncompleteEvaluation``, never a
        robust sample."""
        if not isinstance(plan, Plan):
            plan = _plan_of_jobs(records, plan)
        state = cascade_state(records, indices, plan)
        if state.gaps or state.todo is not None:
            raise IncompleteEvaluation(state.gaps)
        return cls.from_state(state, indices, plan, attempts=attempts)

    @classmethod
    def from_state(cls, state: CascadeState, indices: Sequence[int], plan: Plan, *, attempts: int = 1
                   ) -> "Evaluation":
        """The evaluation of a complete ``CascadeState``."""
        idx = sorted(set(indices))
        clean, clean_all = state.clean, state.clean_all
        correct = {i for i in idx if clean_all[i]}
        robust, robust_all, threats, iterative, seconds, notes, agreement = {}, {}, {}, {}, {}, {}, {}
        stages, broken_below, check_broken = [], {}, {}
        alive: dict[tuple[str, float], set[int]] = {}
        for o in state.outcomes:
            key = (o.spec.name, o.epsilon)
            group = (o.threat, o.epsilon)
            if group not in alive:
                alive[group] = correct - broken_below.get(o.threat, set())
            before = alive[group]
            new = before & o.broken_any
            alive[group] = before - new
            cumulative = plan.cascade or o.factor > 1
            if cumulative:  # robust after this attack and every earlier one of its threat (N-attempt survivors)
                robust[key] = robust_all[key] = {i: i in alive[group] for i in idx}
            else:  # this attack's own outcome on every sample
                robust[key] = {i: clean[i] and i not in o.broken for i in idx}
                robust_all[key] = {i: clean_all[i] and i not in o.broken_any for i in idx}
            threats[o.spec.name], iterative[o.spec.name] = o.threat, o.spec.iterative
            label = f"{o.spec.name}@{o.epsilon:g}"
            seconds[label] = o.seconds
            if o.notes:
                notes[o.spec.name] = "; ".join(o.notes)
            if o.judge_agrees:
                agreement[key] = o.judge_agrees
            stages.append({"attack": o.spec.name, "threat": o.threat, "epsilon": o.epsilon, "attacked": len(o.attacked),
                           "broken": len(new), "left": len(alive[group]), "seconds": round(o.seconds, 2),
                           "projections": o.projections, "model_projections": o.model_projections,
                           **({"escalates": o.base, "factor": o.factor} if o.factor > 1 else {})})
            if group in state.survivors:
                broken_below.setdefault(o.threat, set()).update(correct - state.survivors[group])
        for (t, e), hit in state.unplanned.items():
            check_broken[(t, e)] = {i: True for i in hit}
        return cls(indices=idx, clean={i: clean[i] for i in idx}, robust=robust, threats=threats, iterative=iterative,
                   attempts=attempts, clean_all={i: clean_all[i] for i in idx}, robust_all=robust_all, notes=notes,
                   seconds=seconds, agreement=agreement, check_broken=check_broken, suite=plan.fingerprint(),
                   stages=stages, converged=dict(state.converged), clean_cost=dict(state.clean_cost),
                   survivors={k: sorted(v) for k, v in state.survivors.items()}, specs=list(plan.specs))


def _plan_of_jobs(records: list[dict], jobs: Sequence[tuple[str, float]]) -> Plan:
    """A per-attack plan of ``(attack, ε)`` pairs, threat and kind read from the records themselves."""
    first: dict[str, dict] = {}
    for r in records:
        if r["kind"] == "attack":
            first.setdefault(r["attack"], r)
    specs: dict[str, AttackSpec] = {}
    for name, eps in jobs:
        r = first.get(name, {})
        spec = specs.setdefault(name, AttackSpec(name, None, [], r.get("threat", name), r.get("iterative", True)))
        spec.epsilons = [*spec.epsilons, float(eps)]
    return Plan(None, list(specs.values()), cascade=False, escalation_rounds=0)
