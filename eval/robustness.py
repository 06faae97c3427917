"""Robustness evaluation: clean and robust accuracy per attack and ε, worst case per threat model,
sanity checks (Carlini et al., "On Evaluating Adversarial Robustness", 2019) and reports.

Results are appended to ``records.jsonl`` one batch at a time, so an interrupted run loses nothing and
resumes where it stopped; ``start``/``stop`` evaluate an index range (one shard per machine) and
:func:`merge_records` joins shards.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from manifold_defense.attacks.adapters import HopSkipJump
from manifold_defense.attacks.base import Attack
from manifold_defense.attacks.pixel import LinfPGD
from manifold_defense.validation import InputError, check_images, check_labels

__all__ = ["AttackSpec", "Evaluation", "evaluate", "sanity_checks", "write_report", "merge_records"]


@dataclass
class AttackSpec:
    """An attack to run at several budgets; ``threat`` groups attacks for the worst case ('linf', 'l2',
    'on_manifold' ...). ``iterative=False`` marks single-step attacks for the iterative-vs-single check."""

    name: str
    attack: Attack
    epsilons: Sequence[float]
    threat: str
    iterative: bool = True


@dataclass
class Evaluation:
    """Per-sample outcomes: ``clean[i]`` (correct on the clean input) and ``robust[(name, eps)][i]``
    (correct and not broken by that attack)."""

    indices: list[int]
    clean: dict[int, bool]
    robust: dict[tuple[str, float], dict[int, bool]]
    threats: dict[str, str]
    iterative: dict[str, bool]
    sanity: dict[str, bool] = field(default_factory=dict)
    sanity_details: dict[str, str] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def accuracy(self, key: tuple[str, float] | None = None) -> tuple[float, float, int]:
        """(accuracy, standard error, n) for clean (``key=None``) or one (attack, ε)."""
        vals = list(self.clean.values()) if key is None else list(self.robust[key].values())
        n = len(vals)
        p = sum(vals) / n if n else float("nan")
        return p, math.sqrt(p * (1 - p) / n) if n else float("nan"), n

    def worst_case(self) -> dict[tuple[str, float], tuple[float, float, int]]:
        """Per threat model and ε: a sample is robust only if every attack of that threat at that ε failed."""
        out = {}
        for threat in sorted(set(self.threats.values())):
            eps_set = sorted({e for (a, e) in self.robust if self.threats[a] == threat})
            for eps in eps_set:
                keys = [k for k in self.robust if self.threats[k[0]] == threat and k[1] == eps]
                vals = [all(self.robust[k][i] for k in keys) for i in self.indices]
                p = sum(vals) / len(vals)
                out[(threat, eps)] = (p, math.sqrt(p * (1 - p) / len(vals)), len(vals))
        return out

    def to_dict(self) -> dict:
        """The evaluation as JSON-ready numbers: clean, per attack and ε, worst cases, sanity, notes, timings."""
        acc, se, n = self.accuracy()
        return {
            "n": n,
            "clean": {"accuracy": acc, "stderr": se},
            "robust": {f"{a}@{e:g}": dict(zip(("accuracy", "stderr", "n"), self.accuracy((a, e))))
                       for (a, e) in sorted(self.robust)},
            "worst_case": {f"{t}@{e:g}": dict(zip(("accuracy", "stderr", "n"), v))
                           for (t, e), v in self.worst_case().items()},
            "sanity": self.sanity,
            "sanity_details": self.sanity_details,
            "notes": self.notes,
            "attack_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _done_keys(path: Path, *, repair: bool = False) -> tuple[set, list[dict]]:
    records: list[dict] = []
    torn = False
    if path.is_file():
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        torn = True  # a torn last line from an interrupted write: everything before it is kept
                        break
    if torn and repair:  # drop the fragment (atomically) so new records start on a line of their own
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)
    return {(r["kind"], r.get("attack"), r.get("epsilon"), r["start"]) for r in records}, records


def _append(path: Path | None, record: dict) -> None:
    if path is None:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int = 100,
    out_dir: str | os.PathLike | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
    examples: int = 8,
) -> Evaluation:
    """Run every attack at every ε on samples ``start … stop`` of ``(x, y)``, batch by batch.

    With ``out_dir`` each finished (batch, attack, ε) is appended to ``out_dir/records.jsonl``; a rerun
    skips what is already there. Sample indices are global, so shards merge without renumbering.
    The first ``examples`` images of the first batch are kept (clean, and adversarial at each attack's
    largest ε; with their projections when the model has ``project``) for the report's image grid.
    Attacks that craft on a surrogate projection say which in ``notes``.
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
    stop = len(x) if stop is None else min(stop, len(x))
    if not 0 <= start < stop:
        raise InputError(f"empty index range [{start}, {stop}) for {len(x)} samples")
    path = None
    done: set = set()
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / "records.jsonl"
        done, _ = _done_keys(path, repair=True)
    device = next(model.parameters()).device
    model.eval()
    jobs = [(a, float(e)) for a in attacks for e in a.epsilons]
    bar = tqdm(total=(stop - start + batch_size - 1) // batch_size * (1 + len(jobs)), desc="evaluate",
               disable=not progress)
    fresh: list[dict] = []
    shown: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}
    project = getattr(model, "project", None)

    def keep_examples(name: str, imgs: torch.Tensor) -> None:
        if examples <= 0:
            return
        shown[name] = imgs[:examples].detach().cpu()
        if callable(project):
            shown[f"{name} → projected"] = project(imgs[:examples]).x.detach().cpu()

    def record(r: dict) -> None:
        _append(path, r)
        fresh.append(r)
        done.add((r["kind"], r.get("attack"), r.get("epsilon"), r["start"]))

    for b0 in range(start, stop, batch_size):
        b1 = min(b0 + batch_size, stop)
        xb, yb = x[b0:b1].to(device), y[b0:b1].to(device)
        idx = list(range(b0, b1))
        if ("clean", None, None, b0) not in done:
            with torch.no_grad():
                correct = (model(xb).argmax(1) == yb).cpu().tolist()
            record({"kind": "clean", "start": b0, "indices": idx, "correct": correct})
            if b0 == start:
                keep_examples("clean", xb)
        bar.update(1)
        for spec, eps in jobs:
            if ("attack", spec.name, eps, b0) not in done:
                t0 = time.perf_counter()
                res = spec.attack(model, xb, yb, epsilon=eps)
                record({"kind": "attack", "attack": spec.name, "epsilon": eps, "threat": spec.threat,
                        "iterative": spec.iterative, "start": b0, "indices": idx,
                        "broken": res.success.tolist(), "max_norm": float(res.norms.max()),
                        "seconds": time.perf_counter() - t0})
                if b0 == start and eps == max(spec.epsilons):
                    keep_examples(f"{spec.name} ε={eps:g}", res.adversarial)
                desc = getattr(spec.attack, "surrogate_description", "")
                if desc:
                    notes[spec.name] = f"crafted on {desc}"
            bar.update(1)
    bar.close()
    records = _done_keys(path)[1] if path is not None else fresh
    ev = _from_records(records, start, stop)
    ev.examples, ev.notes = shown, notes
    return ev


def _from_records(records: list[dict], start: int = 0, stop: int | None = None) -> Evaluation:
    clean: dict[int, bool] = {}
    broken: dict[tuple[str, float], dict[int, bool]] = {}
    threats: dict[str, str] = {}
    iterative: dict[str, bool] = {}
    seconds: dict[str, float] = {}
    for r in records:
        if r["kind"] == "clean":
            clean.update(zip(r["indices"], map(bool, r["correct"])))
        else:
            broken.setdefault((r["attack"], float(r["epsilon"])), {}).update(zip(r["indices"], map(bool, r["broken"])))
            threats[r["attack"]] = r["threat"]
            iterative[r["attack"]] = r.get("iterative", True)
            key = f"{r['attack']}@{float(r['epsilon']):g}"
            seconds[key] = seconds.get(key, 0.0) + float(r.get("seconds", 0.0))
    indices = sorted(i for i in clean if i >= start and (stop is None or i < stop))
    robust = {k: {i: clean[i] and not v.get(i, False) for i in indices} for k, v in broken.items()}
    return Evaluation(indices=indices, clean={i: clean[i] for i in indices}, robust=robust, threats=threats,
                      iterative=iterative, seconds=seconds)


def merge_records(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Evaluation:
    """Concatenate shards' ``records.jsonl`` files into ``out`` and return the merged evaluation."""
    records: list[dict] = []
    for p in paths:
        records += _done_keys(Path(p))[1]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return _from_records(records)


def sanity_checks(ev: Evaluation, model: nn.Module | None = None, x: torch.Tensor | None = None,
                  y: torch.Tensor | None = None, *, subset: int = 32, tol: float | None = None,
                  decision_subset: int = 16, decision_attack: Attack | None = None) -> Evaluation:
    """Fill ``ev.sanity`` with pass/fail per check; a failure is reported, never hidden.

    - ``monotone_in_epsilon``: robust accuracy non-increasing in ε, per attack (tolerance one sample).
    - ``iterative_beats_single_step``: per threat and ε, the best iterative attack is no weaker than
      every single-step one.
    - ``large_epsilon_breaks_all`` (needs ``model``, ``x``, ``y``): L∞ PGD at ε = 1 leaves ≤ 5%.
    - ``gradients_not_vanishing`` (needs the model): mean |∇ₓ CE| at the inputs is not ~0.
    - ``decision_based_not_stronger`` (needs the model; ``decision_subset`` > 0): HopSkipJump (labels
      only, immune to gradient masking) on the first ``decision_subset`` evaluated samples, at the
      largest ε of the ℓ2 (else ℓ∞) threat, breaks no more samples than the white-box worst case
      did on the same samples (tolerance one sample).
    """
    n = len(ev.indices)
    tol = 1.0 / max(n, 1) if tol is None else tol
    by_attack: dict[str, list[tuple[float, float]]] = {}
    for (a, e) in ev.robust:
        by_attack.setdefault(a, []).append((e, ev.accuracy((a, e))[0]))
    bad = [a for a, pts in by_attack.items()
           if any(p2 > p1 + tol for (_, p1), (_, p2) in zip(sorted(pts), sorted(pts)[1:]))]
    ev.sanity["monotone_in_epsilon"] = not bad
    ev.sanity_details["monotone_in_epsilon"] = f"violations: {bad}" if bad else "ok"
    viol = []
    for (a, e) in ev.robust:
        if ev.iterative.get(a, True):
            continue
        rivals = [ev.accuracy((b, e2))[0] for (b, e2) in ev.robust
                  if e2 == e and ev.iterative.get(b, True) and ev.threats[b] == ev.threats[a]]
        if rivals and min(rivals) > ev.accuracy((a, e))[0] + tol:
            viol.append(f"{a}@{e:g}")
    ev.sanity["iterative_beats_single_step"] = not viol
    ev.sanity_details["iterative_beats_single_step"] = f"single-step stronger at {viol}" if viol else "ok"
    if model is not None and x is not None and y is not None:
        xs, ys = x[:subset], y[:subset]
        big = LinfPGD(steps=20, rel_stepsize=0.1)(model, xs, ys, epsilon=1.0).robust_accuracy
        ev.sanity["large_epsilon_breaks_all"] = big <= 0.05
        ev.sanity_details["large_epsilon_breaks_all"] = f"L-inf PGD eps=1 leaves {big:.1%} of {len(xs)}"
        device = next(model.parameters()).device
        xg = xs.to(device).clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xg), ys.to(device)), xg)
        mag = float(g.abs().mean())
        ev.sanity["gradients_not_vanishing"] = mag > 1e-8
        ev.sanity_details["gradients_not_vanishing"] = f"mean |grad| = {mag:.3g}"
        worst = ev.worst_case()
        threat = next((t for t in ("l2", "linf") if any(k[0] == t for k in worst)), None)
        if decision_subset > 0 and threat is not None:
            eps = max(e for (t, e) in worst if t == threat)
            idx = ev.indices[:decision_subset]
            attack = decision_attack or HopSkipJump(norm=threat)
            res = attack(model, x[idx].to(device), y[idx].to(device), epsilon=eps)
            hsj_robust = [ev.clean[i] and not bool(b) for i, b in zip(idx, res.success.tolist())]
            keys = [k for k in ev.robust if ev.threats[k[0]] == threat and k[1] == eps]
            wb_robust = [all(ev.robust[k][i] for k in keys) for i in idx]
            a_hsj, a_wb = sum(hsj_robust) / len(idx), sum(wb_robust) / len(idx)
            ev.sanity["decision_based_not_stronger"] = a_hsj >= a_wb - 1.0 / len(idx) - 1e-12
            ev.sanity_details["decision_based_not_stronger"] = (
                f"{type(attack).__name__} {threat} eps={eps:g} on {len(idx)} samples: robust accuracy {a_hsj:.1%} vs "
                f"white-box worst case {a_wb:.1%}")
    return ev


def write_report(ev: Evaluation, out_dir: str | os.PathLike, *, title: str = "robustness") -> dict[str, Path]:
    """``report.json``, ``report.md`` (a table with ± 1.96·SE), ``accuracy_vs_epsilon.png`` and, when the
    evaluation kept examples, ``examples.png`` (clean / adversarial / projected images)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = ev.to_dict()
    (out / "report.json").write_text(json.dumps(d, indent=2))
    lines = [f"# {title}", "", f"n = {d['n']}; accuracy ± 1.96·SE", "", "| attack | ε | accuracy |",
             "|---|---|---|", f"| clean | – | {d['clean']['accuracy']:.3f} ± {1.96 * d['clean']['stderr']:.3f} |"]
    for (a, e) in sorted(ev.robust):
        p, se, _ = ev.accuracy((a, e))
        lines.append(f"| {a} | {e:g} | {p:.3f} ± {1.96 * se:.3f} |")
    for (t, e), (p, se, _) in ev.worst_case().items():
        lines.append(f"| **worst {t}** | {e:g} | **{p:.3f} ± {1.96 * se:.3f}** |")
    lines += ["", "## Sanity checks", ""]
    lines += [f"- {'PASS' if ok else '**FAIL**'} {k}: {ev.sanity_details.get(k, '')}" for k, ok in ev.sanity.items()]
    if ev.notes:
        lines += ["", "## Which projection was attacked", ""]
        lines += [f"- {a}: {note}" for a, note in sorted(ev.notes.items())]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in sorted({k[0] for k in ev.robust}):
        eps = sorted(e for (b, e) in ev.robust if b == a)
        acc = [ev.accuracy((a, e)) for e in eps]
        ax.errorbar(eps, [p for p, _, _ in acc], yerr=[1.96 * s for _, s, _ in acc], marker="o", ms=3, capsize=2,
                    label=f"{a} ({ev.threats[a]})")
    ax.set_xlabel("ε")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "accuracy_vs_epsilon.png"}
    if ev.examples:
        from manifold_defense.viz import save_image_grid

        names = list(ev.examples)
        paths["examples"] = save_image_grid([ev.examples[k] for k in names], out / "examples.png", row_labels=names,
                                            title=title)
    return paths
