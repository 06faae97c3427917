"""What a plan still has to attack, and what its records say — one function for both, so the run and the
report can never disagree about which samples were attacked.

``cascade_state`` walks a ``Plan`` over the records of a run, per threat
model and ε (ε ascending), attack by attack, then escalation round by escalation round:

- the samples an attack *must* have attacked: every sample of the run (columns), or — in a survivor cascade —
  exactly the samples that are correct (in every attempt) and that no earlier attack of the threat, at this
  ε or a smaller one, broke; the escalation rounds always take the survivors of everything before them;
- the records of that attack must cover those samples (otherwise this is the work still to do, and no
  number exists: ``IncompleteEvaluation``) and, in a cascade, claim no
  other sample (a record that says it attacked a sample the cascade had already dropped is not a record of
  this cascade: ``RecordError``);
- escalation: after the suite's attacks, the iterative attack that broke the largest share of the samples
  it attacked runs again at 2×, 4× … its iterations with fresh restarts, on the survivors, until a round
  breaks none (converged) or the rounds run out (not converged: the worst case is an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from manifold_defense.eval.records import RecordError, index_ranges
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.eval.suites import Plan

__all__ = ["StageOutcome", "CascadeState", "cascade_state"]


@dataclass
class StageOutcome:
    """One attack (or escalation round) at one ε: the samples it attacked, the ones it broke (in one attempt and
    in any attempt), its seconds, and for an escalation round the attack it escalates and the factor."""

    spec: AttackSpec
    threat: str
    epsilon: float
    attacked: list[int]
    broken: set[int]
    broken_any: set[int]
    seconds: float
    base: str
    factor: int = 1
    projections: int = 0
    model_projections: int = 0
    notes: list[str] = field(default_factory=list)
    judge_agrees: dict[str, dict[int, bool]] = field(default_factory=dict)


@dataclass
class CascadeState:
    """The walk's result: ``todo`` — the first (attack, ε, samples) still to attack in plan order (None when
    the plan is complete); ``todos`` — the first one of every threat model (threat models share nothing but the
    clean answers, so their next stages can run side by side; a later ε of a threat waits for the smaller ones,
    whose breaks decide what it attacks); ``gaps`` — per attack@ε the samples without a record; the completed
    ``outcomes`` in plan order; per (threat, ε) the survivors and whether the escalation converged (None: no
    escalation ran)."""

    clean: dict[int, bool]
    clean_all: dict[int, bool]
    todo: tuple[AttackSpec, float, list[int]] | None
    gaps: dict[str, list[int]]
    outcomes: list[StageOutcome]
    survivors: dict[tuple[str, float], set[int]]
    converged: dict[tuple[str, float], bool | None]
    escalated: dict[tuple[str, float], str]
    #: (threat, ε) → samples broken by records of this run that the plan did not ask for (an escalation of another
    #: attack, from a shard that chose differently): a break is a break, so they count in the worst case
    unplanned: dict[tuple[str, float], set[int]] = field(default_factory=dict)
    #: the clean pass's seconds and projections (summed over its records)
    clean_cost: dict[str, float] = field(default_factory=dict)
    todos: list[tuple[AttackSpec, float, list[int]]] = field(default_factory=list)


def _by_attack(records: Iterable[dict], want: set[int]) -> tuple[dict, dict, dict, dict]:
    """Clean verdicts (one attempt, all attempts), the attack records per (attack, ε), on ``want`` only, and the
    clean pass's cost."""
    clean, clean_all, per = {}, {}, {}
    cost = {"seconds": 0.0, "projections": 0, "model_projections": 0}
    for r in records:
        rows = [(k, i) for k, i in enumerate(r["indices"]) if i in want]
        if r["kind"] == "clean" and rows:
            for k in cost:
                cost[k] += r.get(k, 0)
        if r["kind"] == "clean":
            for k, i in rows:
                if i in clean:
                    raise RecordError(f"two clean records for sample {i}: the records were merged or resumed "
                                      "wrongly; rerun into a fresh folder")
                clean[i] = bool(r["correct"][k])
                clean_all[i] = bool(r.get("correct_all", r["correct"])[k])
        elif rows:
            per.setdefault((r["attack"], float(r["epsilon"])), []).append((r, rows))
    return clean, clean_all, per, cost


def _outcome(spec: AttackSpec, threat: str, eps: float, items: list, base: str, factor: int) -> StageOutcome:
    attacked, broken, broken_any, seconds, notes, judges = [], set(), set(), 0.0, [], {}
    projections = model_projections = 0
    seen: set[int] = set()
    for r, rows in items:
        for k, i in rows:
            if i in seen:
                raise RecordError(f"two records for sample {i} under {spec.name}@{eps:g}: the records were merged or "
                                  "resumed wrongly; rerun into a fresh folder")
            seen.add(i)
            attacked.append(i)
            if r["broken"][k]:
                broken.add(i)
            if r.get("broken_any", r["broken"])[k]:
                broken_any.add(i)
            for judge, agrees in r.get("judge_agrees", {}).items():
                judges.setdefault(judge, {})[i] = bool(agrees[k])
        seconds += float(r.get("seconds", 0.0))
        projections += int(r.get("projections", 0))
        model_projections += int(r.get("model_projections", 0))
        if r.get("note") and r["note"] not in notes:
            notes.append(r["note"])
    return StageOutcome(spec, threat, eps, sorted(attacked), broken, broken_any, seconds, base, factor,
                        projections=projections, model_projections=model_projections, notes=notes, judge_agrees=judges)


def cascade_state(records: Iterable[dict], indices: Sequence[int], plan: Plan) -> CascadeState:
    """Walk ``plan`` over ``records`` for the samples ``indices`` (see the module docstring)."""
    want = set(indices)
    clean, clean_all, per, clean_cost = _by_attack(records, want)
    missing_clean = sorted(want - set(clean))
    gaps: dict[str, list[int]] = {"clean": missing_clean} if missing_clean else {}
    todos: dict[str, tuple[AttackSpec, float, list[int]]] = {}  # threat → its first stage still to attack
    outcomes: list[StageOutcome] = []
    survivors: dict[tuple[str, float], set[int]] = {}
    converged: dict[tuple[str, float], bool | None] = {}
    escalated: dict[tuple[str, float], str] = {}
    if missing_clean:  # nothing can be said about survivors before every clean answer is in
        return CascadeState(clean, clean_all, None, gaps, outcomes, survivors, converged, escalated, {}, clean_cost)
    correct = {i for i in want if clean_all[i]}
    broken_below: dict[str, set[int]] = {}  # per threat: broken at a smaller ε (a fortiori at this one)

    def stage(spec: AttackSpec, threat: str, eps: float, need: set[int], strict: bool, base: str,
              factor: int) -> StageOutcome | None:
        out = _outcome(spec, threat, eps, per.get((spec.name, eps), []), base, factor)
        have = set(out.attacked)
        if strict and have - need:
            extra = sorted(have - need)
            raise RecordError(f"records of {spec.name}@{eps:g} claim samples the cascade did not attack there "
                              f"({index_ranges(extra)}: already broken, or wrong, before it): they are not records of this "
                              "cascade; evaluate into a fresh folder")
        if need - have:
            gaps[f"{spec.name}@{eps:g}"] = sorted(need - have)
            todos.setdefault(threat, (spec, eps, sorted(need - have)))
            return None
        outcomes.append(out)
        return out

    for threat, eps, specs in plan.groups():
        alive = correct - broken_below.get(threat, set())
        everyone = set(want)
        complete = True
        for spec in specs:
            need = alive if plan.cascade else everyone
            out = stage(spec, threat, eps, need, plan.cascade, spec.name, 1)
            if out is None:
                complete = False
                break
            alive = alive - out.broken_any
        if complete and plan.escalation_rounds > 0:
            pool = [o for o in outcomes if o.threat == threat and o.epsilon == eps and o.factor == 1
                    and o.spec.iterative and o.attacked]
            if pool:  # the largest share broken among the samples it attacked; ties: the earlier attack
                best = max(pool, key=lambda o: (len(o.broken_any & correct) / len(o.attacked), -outcomes.index(o)))
                escalated[(threat, eps)] = best.spec.name
                converged[(threat, eps)] = not alive or None
                for k in range(1, plan.escalation_rounds + 1):
                    if not alive:
                        break
                    out = stage(plan.escalation(best.spec, k), threat, eps, alive, True, best.spec.name, 2 ** k)
                    if out is None:
                        complete = False
                        break
                    newly = alive & out.broken_any
                    alive = alive - newly
                    converged[(threat, eps)] = not newly or not alive  # nothing left: the worst case is exact
                    if not newly:
                        break
        if complete:
            survivors[(threat, eps)] = alive
            broken_below.setdefault(threat, set()).update(correct - alive)
    used = {(o.spec.name, o.epsilon) for o in outcomes} | {(s.name, e) for _, e, ss in plan.groups() for s in ss}
    unplanned: dict[tuple[str, float], set[int]] = {}
    for key, items in per.items():
        if key not in used:
            for r, rows in items:
                hit = {i for k, i in rows if r.get("broken_any", r["broken"])[k] and i in correct}
                if hit:
                    unplanned.setdefault((r["threat"], key[1]), set()).update(hit)
    first = list(todos.values())
    return CascadeState(clean, clean_all, first[0] if first else None, gaps, outcomes, survivors, converged, escalated,
                        unplanned, clean_cost, first)
