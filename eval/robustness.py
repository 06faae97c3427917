"""Robustness evaluation: clean and robust accuracy per attack and ε, worst case per threat model, with
intervals that hold at small n, one-attempt and N-attempt numbers for randomised defenses.

Results go to a fail-closed record store (:mod:`manifold_defense.eval.records`) one batch at a time, so
an interrupted run loses nothing and resumes where it stopped; ``start``/``stop`` evaluate a range of
batches (a shard) and :func:`~manifold_defense.eval.records.merge_records` joins shards; under
``torchrun`` every rank evaluates its share of the batches and every rank returns the whole evaluation.
A number is only ever computed from complete records.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_defense.attacks.base import Attack, labels_of, predict_labels
from manifold_defense.eval.records import (
    IncompleteEvaluation,
    RecordError,
    RecordStore,
    attack_fingerprint,
    attack_record,
    coverage_gaps,
    model_fingerprint,
    read_records,
    tensor_digest,
)
from manifold_defense.utils import state_digest
from manifold_defense.validation import InputError, check_images, check_labels

__all__ = ["AttackSpec", "Evaluation", "evaluate", "wilson_interval"]


@dataclass
class AttackSpec:
    """An attack to run at several budgets; ``threat`` groups attacks for the worst case ('linf', 'l2',
    'on_manifold' ...). ``iterative=False`` marks single-step attacks for the iterative-vs-single check."""

    name: str
    attack: Attack
    epsilons: Sequence[float]
    threat: str
    iterative: bool = True


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
    """Per-sample outcomes: ``clean[i]`` (correct on the clean input) and ``robust[(name, eps)][i]`` (correct
    and not broken by that attack), in one attempt; ``clean_all``/``robust_all`` hold the N-attempt outcomes
    (correct in, and not broken by any of, ``attempts`` fresh evaluations of a randomised model)."""

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

    def _table(self, key: tuple[str, float] | None, attempts: int) -> dict[int, bool]:
        if attempts > 1:
            return (self.clean_all or self.clean) if key is None else self.robust_all.get(key, self.robust[key])
        return self.clean if key is None else self.robust[key]

    def accuracy(self, key: tuple[str, float] | None = None, *, attempts: int = 1) -> tuple[float, float, int]:
        """(accuracy, standard error, n) for clean (``key=None``) or one (attack, ε); ``attempts > 1``: N-attempt."""
        return _summary(list(self._table(key, attempts).values()))

    def interval(self, key: tuple[str, float] | None = None, *, attempts: int = 1) -> tuple[float, float]:
        """95 % Wilson interval of :meth:`accuracy`."""
        vals = list(self._table(key, attempts).values())
        return wilson_interval(sum(vals), len(vals))

    def worst_case_samples(self, *, attempts: int = 1) -> dict[tuple[str, float], list[bool]]:
        """Per threat model and ε, per sample: robust only if every attack of that threat at that ε *or any
        smaller ε* failed (an adversarial input within ε' ≤ ε of x is one within ε too), the sanity checks'
        attacks included (:attr:`check_broken`)."""
        out = {}
        for threat in sorted(set(self.threats.values())):
            for eps in sorted({e for (a, e) in self.robust if self.threats[a] == threat}):
                keys = [k for k in self.robust if self.threats[k[0]] == threat and k[1] <= eps]
                checks = [v for (t, e), v in self.check_broken.items() if t == threat and e <= eps]
                out[(threat, eps)] = [all(self._table(k, attempts)[i] for k in keys)
                                      and not any(c.get(i, False) for c in checks) for i in self.indices]
        return out

    def add_breaks(self, threat: str, eps: float, idx: Sequence[int], broken: Sequence[bool]) -> int:
        """Count samples an attack beside the columns broke (:attr:`check_broken`) in the worst case at ``eps``
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
        """Per attack and ε, per judge: how often it gives the adversarial inputs the true label, over every
        sample (``all``) and over the samples the attack broke (``broken``: the label still held there?)."""
        out: dict[str, dict[str, dict]] = {}
        for (a, e), judges in sorted(self.agreement.items()):
            broken = [i for i in self.indices if self.clean[i] and not self.robust[(a, e)][i]]
            out[f"{a}@{e:g}"] = {j: {"all": self._entry([v[i] for i in self.indices]),
                                     "broken": self._entry([v[i] for i in broken])} for j, v in judges.items()}
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
        d = {"n": len(self.indices), "attempts": self.attempts, "clean": self._entry(list(self.clean.values())),
             "robust": {f"{a}@{e:g}": self._entry(list(self.robust[(a, e)].values())) for (a, e) in sorted(self.robust)},
             "worst_case": {f"{t}@{e:g}": self._entry(v) for (t, e), v in self.worst_case_samples().items()},
             "sanity": self.sanity, "sanity_details": self.sanity_details, "notes": self.notes,
             "attack_seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "run": self.run}
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
    def from_records(cls, records: list[dict], indices: Sequence[int], jobs: Sequence[tuple[str, float]], *,
                     attempts: int = 1) -> "Evaluation":
        """Build the evaluation of ``indices`` under ``jobs`` ((attack, ε) pairs) from records; a missing record
        is an :class:`~manifold_defense.eval.records.IncompleteEvaluation`, never a robust sample."""
        gaps = coverage_gaps(records, indices, jobs)
        if gaps:
            raise IncompleteEvaluation(gaps)
        want = set(indices)
        clean, clean_all, broken, broken_any, agreement = {}, {}, {}, {}, {}
        threats, iterative, seconds, notes = {}, {}, {}, {}
        wanted_jobs = {(a, float(e)) for a, e in jobs}
        def once(table: dict, key, i: int) -> None:  # two verdicts for one sample: merged or resumed wrongly
            if i in table:
                raise RecordError(f"two records for sample {i} under {key}: the records were merged or resumed "
                                  "wrongly; rerun into a fresh folder")

        for r in records:
            rows = [(i, k) for k, i in enumerate(r["indices"]) if i in want]
            if r["kind"] == "clean":
                for i, _ in rows:
                    once(clean, "clean", i)
                clean.update((i, bool(r["correct"][k])) for i, k in rows)
                clean_all.update((i, bool(r.get("correct_all", r["correct"])[k])) for i, k in rows)
                continue
            key = (r["attack"], float(r["epsilon"]))
            if key not in wanted_jobs:
                continue
            for i, _ in rows:
                once(broken.get(key, {}), key, i)
            broken.setdefault(key, {}).update((i, bool(r["broken"][k])) for i, k in rows)
            broken_any.setdefault(key, {}).update((i, bool(r.get("broken_any", r["broken"])[k])) for i, k in rows)
            for judge, agrees in r.get("judge_agrees", {}).items():
                agreement.setdefault(key, {}).setdefault(judge, {}).update((i, bool(agrees[k])) for i, k in rows)
            threats[r["attack"]], iterative[r["attack"]] = r["threat"], r.get("iterative", True)
            label = f"{r['attack']}@{float(r['epsilon']):g}"
            seconds[label] = seconds.get(label, 0.0) + float(r.get("seconds", 0.0))
            if r.get("note"):
                notes[r["attack"]] = r["note"]
        idx = sorted(want)
        robust = {k: {i: clean[i] and not v[i] for i in idx} for k, v in broken.items()}
        robust_all = {k: {i: clean_all[i] and not v[i] for i in idx} for k, v in broken_any.items()}
        return cls(indices=idx, clean={i: clean[i] for i in idx}, robust=robust, threats=threats, iterative=iterative,
                   attempts=attempts, clean_all={i: clean_all[i] for i in idx}, robust_all=robust_all,
                   notes=notes, seconds=seconds,
                   agreement={k: v for k, v in agreement.items() if all(len(a) == len(idx) for a in v.values())})


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _predictions(model: nn.Module, x: torch.Tensor, attempts: int) -> torch.Tensor:
    """``(attempts, N)`` predicted labels from fresh forward passes (a randomised model draws anew each time);
    -1 where a logit is not finite (wrong for every label)."""
    with torch.no_grad():
        return torch.stack([labels_of(model(x)) for _ in range(attempts)])


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[AttackSpec], *, batch_size: int = 100,
    out_dir: str | os.PathLike | None = None, start: int = 0, stop: int | None = None, progress: bool = True,
    examples: int = 8, attempts: int = 1, dataset: str | None = None, judges: Mapping[str, nn.Module] | None = None,
    distributed: bool = True,
) -> Evaluation:
    """Run every attack at every ε on samples ``start … stop`` of ``(x, y)``, batch by batch.

    Batches are ``[b, b + batch_size)`` for ``b`` a multiple of ``batch_size``, so a shard attacks exactly
    the batches an unsharded run does (``start`` must be such a multiple). With ``out_dir`` each finished
    (batch, attack, ε) is appended to the record store there; a rerun skips what is recorded, and a folder
    of another run is refused (see :mod:`manifold_defense.eval.records`). ``attempts`` > 1 scores every
    clean and adversarial input that many times (a sample of a randomised defense is broken in N attempts if
    any draw misclassifies it); both numbers are reported. Under ``torchrun`` (``out_dir`` required) rank
    ``r`` attacks every ``world``-th batch into ``out_dir/shard-r-of-W`` and every rank returns the evaluation
    of all shards, checked for complete coverage (``distributed=False``: this process alone, e.g. rank 0's sanity
    checks). The first ``examples`` images of the first batch are kept
    for the report's image grid. ``judges`` (name → classifier, never the attacked one nor trained on these
    examples) label every adversarial input: their agreement with the true label shows whether an
    on-manifold attack kept the label (:meth:`Evaluation.judge_agreement`).
    """
    check_images(x, getattr(model, "input_shape", None))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if not attacks:
        raise InputError("give at least one attack")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise InputError(f"attack names must be unique, got {names}")
    for a in attacks:
        if not a.epsilons or min(a.epsilons) < 0:
            raise InputError(f"attack {a.name} needs non-negative epsilons, got {list(a.epsilons)}")
    if attempts < 1:
        raise InputError(f"attempts must be >= 1, got {attempts}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    stop = len(x) if stop is None else min(stop, len(x))
    if not 0 <= start < stop:
        raise InputError(f"empty index range [{start}, {stop}) for {len(x)} samples")
    if start % batch_size:
        raise InputError(f"start ({start}) must be a multiple of batch_size ({batch_size}): a shard must attack the "
                         "same batches as an unsharded run")
    world, rank = _world() if distributed else (1, 0)
    if world > 1 and out_dir is None:
        raise InputError("a distributed evaluation needs out_dir (each rank writes its shard there)")
    run = {"model": model_fingerprint(model), "data": {"digest": tensor_digest(x, y), "n": len(x), "dataset": dataset},
           "batch_size": batch_size, "attempts": attempts}
    judges = dict(judges or {})
    attacked = {model_fingerprint(model)["classifier"], state_digest(model)}
    for name, j in judges.items():  # the same weights are the same classifier, whatever object holds them
        if j is model or model_fingerprint(j)["classifier"] in attacked or state_digest(j) in attacked:
            raise InputError(f"judge {name!r} must be independent of the attacked model (it has the attacked "
                             "classifier's weights)")
    norms: dict[str, str | None] = {}
    for s in attacks:  # a threat's worst case compares ε across its attacks: one unit per threat
        norm = getattr(s.attack, "norm", None)
        if norms.setdefault(s.threat, norm) != norm:
            raise InputError(f"threat {s.threat!r} mixes budgets in {norms[s.threat]!r} and {norm!r} ({s.name}); "
                             "give attacks with another budget unit their own threat name")
    if judges:  # part of the run: a resume with other judges is another run
        run["judges"] = {name: model_fingerprint(j) for name, j in sorted(judges.items())}
    folder = None if out_dir is None else Path(out_dir) / (f"shard-{rank}-of-{world}" if world > 1 else "")
    store = RecordStore(folder, run) if folder is not None else None
    fingerprints = {s.name: attack_fingerprint(s) for s in attacks}
    if store is not None:
        for s in attacks:
            store.check_attack(s.name, fingerprints[s.name])
    device = next(iter(model.parameters()), x).device  # a model without parameters runs where x is
    model.eval()
    batches = [b for b in range(start, stop, batch_size) if (b // batch_size) % world == rank]
    fresh: list[dict] = []
    shown: dict[str, torch.Tensor] = {}
    project = getattr(model, "project", None)

    def done(kind: str, attack: str | None, eps: float | None, b: int) -> bool:
        return store.has(kind, attack, eps, b, list(range(b, min(b + batch_size, stop)))) if store is not None else False

    def record(r: dict) -> None:
        (store.append if store is not None else fresh.append)(r)

    # example images live in the run folder too, written as they are made: a resumed (or crashed and rerun)
    # evaluation shows every attack's examples, as an uninterrupted one does
    example_path = folder / "examples.pt" if folder is not None and world == 1 else None
    order = ["clean"] + [f"{s.name} ε={max(s.epsilons):g}" for s in attacks]
    stored = _stored_examples(example_path, order)

    def keep_examples(name: str, imgs: torch.Tensor) -> None:
        if examples > 0:
            shown[name] = imgs[:examples].detach().cpu()
            if callable(project):
                shown[f"{name} → projected"] = project(imgs[:examples]).x.detach().cpu()
            if example_path is not None:
                from manifold_defense.checkpoint import save_checkpoint

                save_checkpoint(example_path, {**stored, **shown})

    bar = tqdm(total=len(batches) * (1 + len(attacks)), desc="evaluate", disable=not progress)
    for b0 in batches:
        b1 = min(b0 + batch_size, stop)
        xb, yb = x[b0:b1].to(device), y[b0:b1].to(device)
        idx = list(range(b0, b1))
        if not done("clean", None, None, b0):
            preds = _predictions(model, xb, attempts)
            record({"kind": "clean", "start": b0, "indices": idx, "correct": (preds[0] == yb).cpu().tolist(),
                    "correct_all": (preds == yb).all(0).cpu().tolist()})
        if b0 == start:
            keep_examples("clean", xb)
        bar.update(1)
        for spec in attacks:
            todo = [float(e) for e in spec.epsilons if not done("attack", spec.name, float(e), b0)]
            if todo:
                t0 = time.perf_counter()
                results = spec.attack.sweep(model, xb, yb, todo)
                seconds = (time.perf_counter() - t0) / len(todo)
                note = getattr(spec.attack, "surrogate_description", "")
                for eps, res in results.items():
                    broken = res.success.to(device)
                    if attempts > 1:
                        broken = broken | (_predictions(model, res.adversarial, attempts - 1) != yb).any(0)
                    extra = {}
                    if judges:
                        extra["judge_agrees"] = {name: (predict_labels(j.to(device).eval(), res.adversarial.to(device))
                                                        == yb).cpu().tolist() for name, j in judges.items()}
                    record(attack_record(spec, fingerprints[spec.name], eps, b0, idx, broken=res.success.tolist(),
                                         broken_any=broken.cpu().tolist(), max_norm=float(res.norms.max()),
                                         seconds=seconds, note=f"crafted on {note}" if note else "", **extra))
                    if b0 == start and eps == max(spec.epsilons):
                        keep_examples(f"{spec.name} ε={eps:g}", res.adversarial)
            bar.update(1)
    bar.close()
    if world > 1:
        torch.distributed.barrier()
        records = []
        for r in range(world):
            shard = Path(out_dir) / f"shard-{r}-of-{world}"
            RecordStore(shard, run)  # the same run in every shard, or a RecordError
            records += read_records(shard / "records.jsonl")
    else:
        records = store.records if store is not None else fresh
    jobs = [(s.name, float(e)) for s in attacks for e in s.epsilons]
    ev = Evaluation.from_records(records, range(start, stop), jobs, attempts=attempts)
    merged = {**stored, **shown}
    ev.examples = {k: merged[k] for name in order for k in (name, f"{name} → projected") if k in merged}
    ev.run, ev.specs = run, list(attacks)
    return ev


def _stored_examples(path: Path | None, names: list[str]) -> dict[str, torch.Tensor]:
    """The example images an earlier call of this run kept in ``path``, for ``names`` (and their projections)
    only: an attack or largest ε no longer evaluated is not shown."""
    if path is None or not path.is_file():
        return {}
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in stored.items() if k.removesuffix(" → projected") in names}
