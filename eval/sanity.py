"""Sanity checks of an evaluation (Carlini et al., "On Evaluating Adversarial Robustness", 2019), each able
to fail, and reported as PASS, FAIL or "could not run: why" — never dropped, never a crash that loses the
report.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.attacks.adapters import HopSkipJump
from manifold_defense.attacks.base import Attack
from manifold_defense.attacks.pixel import LinfPGD
from manifold_defense.eval.robustness import Evaluation
from manifold_defense.eval.runner import evaluate
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.utils import evaluation_mode

__all__ = ["sanity_checks", "gradient_agreement", "scaled_attack"]


def _check(ev: Evaluation, name: str, fn: Callable[[], tuple[bool, str]]) -> None:
    try:
        ok, detail = fn()
    except Exception as exc:  # a check that cannot run is reported, with the reason
        ev.sanity[name], ev.sanity_details[name] = None, f"could not run: {type(exc).__name__}: {exc}"
    else:
        ev.sanity[name], ev.sanity_details[name] = bool(ok), detail


def gradient_agreement(model: nn.Module | Sequence[nn.Module], attacked: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, *, directions: int = 32, h: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Per sample, the correlation between the attack's directional derivatives ``∇ₓ L(model) · u`` and
    central finite differences of the *attacked* model's loss, ``(L(x + h u) − L(x − h u)) / 2h``, over
    ``directions`` random unit directions ``u`` (SPSA-like zeroth-order estimates, no gradient of
    ``attacked`` needed). For random ``u`` this estimates the cosine between the attack's gradient and the
    true one: ~1 for an exact gradient, ~0 for a useless one (a zero gradient gives 0). A sequence of
    models (several attacks' gradients) shares the finite differences, the costly part, and gives
    ``(len(model), n)``."""
    device = next(attacked.parameters()).device
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(seed)
    n, d = len(x), x[0].numel()
    u = torch.randn(n, directions, d, generator=gen, dtype=x.dtype).to(device)
    u = u / u.norm(dim=2, keepdim=True)
    models = [model] if isinstance(model, nn.Module) else list(model)
    grads = []
    with torch.enable_grad():
        for m in models:
            xg = x.detach().clone().requires_grad_(True)
            grads.append(torch.autograd.grad(F.cross_entropy(m(xg), y, reduction="sum"), xg)[0].flatten(1))
    predicted = torch.einsum("mnd,nkd->mnk", torch.stack(grads), u)
    xs = x.flatten(1)[:, None, None] + h * torch.stack([u, -u], 2)  # (n, k, 2, d)
    xs = xs.clamp(0, 1).view(-1, *x.shape[1:])
    with torch.no_grad():
        loss = F.cross_entropy(attacked(xs), y.repeat_interleave(2 * directions), reduction="none").view(n, directions, 2)
    measured = (loss[..., 0] - loss[..., 1]) / (2 * h)
    pc, mc = predicted - predicted.mean(2, keepdim=True), measured - measured.mean(1, keepdim=True)
    denom = pc.norm(dim=2) * mc.norm(dim=1)
    corr = torch.where(denom > 0, (pc * mc).sum(2) / denom.clamp_min(1e-30), torch.zeros_like(denom))
    return corr[0] if isinstance(model, nn.Module) else corr


_SCALED = ("steps", "n_iter", "restarts", "range_restarts", "target_starts")


def scaled_attack(attack: Attack, factor: int) -> Attack:
    """A copy of ``attack`` with ``factor`` × its iterations and restarts (``steps``, ``n_iter``, ``restarts``,
    ``range_restarts``; nested attacks' too). More iterations alone miss an attack whose restarts are what
    still find new adversarial examples (Carlini et al. 2019 ask for both)."""
    out = copy.copy(attack)
    for name, value in vars(attack).items():
        if name in _SCALED and isinstance(value, int) and not isinstance(value, bool):
            setattr(out, name, value * factor)
        elif isinstance(value, Attack):
            setattr(out, name, scaled_attack(value, factor))
    return out


def _samples_name(idx: Sequence[int]) -> str:
    """A folder name for a sample set: ``0-32`` for a range, else its first and last index and a digest."""
    idx = list(idx)
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}-{idx[-1] + 1}"
    return f"{idx[0]}-{idx[-1] + 1}-{hashlib.sha256(repr(idx).encode()).hexdigest()[:12]}"


def sanity_checks(ev: Evaluation, model: nn.Module | None = None, x: torch.Tensor | None = None,
                  y: torch.Tensor | None = None, *, attacks: Sequence[AttackSpec] | None = None, subset: int = 32,
                  tol: float | None = None, decision_subset: int = 16, decision_attack: Attack | None = None,
                  gradient_subset: int = 8, directions: int = 32, convergence_subset: int = 32,
                  out_dir: str | os.PathLike | None = None, batch_size: int | None = None) -> Evaluation:
    """Fill ``ev.sanity`` (True / False / None = could not run) and ``ev.sanity_details``.

    - ``monotone_in_epsilon``: robust accuracy non-increasing in ε, per attack (tolerance one sample).
    - ``iterative_beats_single_step``: per threat and ε, the best iterative attack is no weaker than each
      single-step one.
    - with ``model``, ``x``, ``y``: ``large_epsilon_breaks_all`` (ℓ∞ PGD at ε = 1 leaves ≤ 5 %);
      ``gradients_informative`` (the attacks' gradient — the model's own, BPDA's or the implicit one —
      agrees with finite differences of the *true* loss of the attacked model, ``gradient_agreement``;
      fails when, for every such gradient, the mean agreement is below 0.1 or not above zero by 2 SE: masked
      or useless gradients);
      ``attack_converged`` (Carlini et al. 2019's "more iterations and restarts stop helping": after a suite,
      the run's own escalation — its last round broke nothing, per threat model and ε; after attacks chosen
      by the caller, per threat model the strongest iterative attack at twice its iterations and restarts
      (``scaled_attack``) on ``convergence_subset`` samples changes robust accuracy by at most one point
      or one sample);
      ``decision_based_not_stronger`` (HopSkipJump, labels only, on up to ``decision_subset`` of the samples
      the white-box attacks left, breaks at most one of them).

    Every sample a check's own attack breaks (ε = 1 PGD, the convergence reruns, the decision-based attack)
    goes to ``ev.check_broken`` and counts in ``Evaluation.worst_case`` at that ε and above: an adversarial
    input a check found is as real as the evaluation's own.

    The checks' attacks run through ``evaluate`` in batches of ``batch_size`` (default:
    the whole subset); with ``out_dir`` each finished batch is recorded under ``out_dir/<check>/<samples>``, so a
    killed run resumes its checks (hours behind a costly projection) from their records, fingerprint-checked like
    any, and the same check on other samples (another ``--stop``) has a folder of its own.
    """
    n = len(ev.indices)
    tol = 1.0 / max(n, 1) if tol is None else tol
    attacks = list(attacks if attacks is not None else ev.specs)

    def monotone() -> tuple[bool, str]:
        by_attack: dict[str, list[tuple[float, float]]] = {}
        for (a, e) in ev.robust:
            by_attack.setdefault(a, []).append((e, ev.accuracy((a, e))[0]))
        bad = [a for a, pts in by_attack.items() if any(p2 > p1 + tol for (_, p1), (_, p2) in zip(sorted(pts), sorted(pts)[1:]))]
        return not bad, f"violations: {bad}" if bad else "ok"

    def iterative() -> tuple[bool, str]:
        viol = []
        for (a, e) in ev.robust:
            if ev.iterative.get(a, True):
                continue
            rivals = [ev.accuracy((b, e2))[0] for (b, e2) in ev.robust
                      if e2 == e and ev.iterative.get(b, True) and ev.threats[b] == ev.threats[a]]
            if rivals and min(rivals) > ev.accuracy((a, e))[0] + tol:
                viol.append(f"{a}@{e:g}")
        return not viol, f"single-step stronger at {viol}" if viol else "ok"

    _check(ev, "monotone_in_epsilon", monotone)
    _check(ev, "iterative_beats_single_step", iterative)
    if model is None or x is None or y is None:
        return ev

    def run(attack: Attack, name: str, check: str, threat: str, eps: float, idx: list[int]) -> tuple[float, list[bool]]:
        """(robust accuracy, per-sample breaks) of a check's own attack on the samples ``idx``, recorded (with
        ``out_dir``) in a folder of its own per sample set: the same check on other samples (another range of
        the evaluation, other survivors) never meets these records."""
        spec = AttackSpec(name=name, attack=attack, epsilons=[eps], threat=threat)
        folder = None if out_dir is None else Path(out_dir) / check / _samples_name(idx)
        res = evaluate(model, x[idx], y[idx], [spec], batch_size=batch_size or len(idx), examples=0, progress=False,
                       out_dir=folder, distributed=False)  # this rank's own
        key = (name, float(eps))
        return res.accuracy(key)[0], [not res.robust[key][i] for i in res.indices]  # positions in idx

    def large_eps() -> tuple[bool, str]:
        idx = ev.indices[:subset]  # the evaluation's own samples (positions in x), as the other checks use
        left, broken = run(LinfPGD(steps=20, rel_stepsize=0.1), "pgd_linf_1", "large_epsilon_breaks_all", "linf", 1.0, idx)
        ev.add_breaks("linf", 1.0, idx, broken)
        return left <= 0.05, f"L-inf PGD eps=1 leaves {left:.1%} of {len(idx)}"

    def informative() -> tuple[bool, str]:
        from manifold_defense.attacks.adaptive import BPDA, ImplicitPGD, crafting_model

        idx = ev.indices[:gradient_subset]
        # the gradients the evaluation's attacks followed: the model's own mode, and BPDA's / the implicit one
        modes = [getattr(model, "gradient", "exact (undefended)")]
        modes += [m for m, cls in (("bpda", BPDA), ("implicit", ImplicitPGD)) if hasattr(model, "gradient")
                  and any(type(s.attack) is cls for s in attacks) and m not in modes]
        parts, ok = [], False
        grad_models = [crafting_model(model, gradient=m) if hasattr(model, "gradient") else model for m in modes]
        agreement = gradient_agreement(grad_models, model, x[idx], y[idx], directions=directions)  # one FD pass
        for mode, corr in zip(modes, agreement):
            m, se = float(corr.mean()), float(corr.std() / math.sqrt(len(corr))) if len(corr) > 1 else 0.0
            parts.append(f"{mode} {m:.2f} ± {se:.2f}")
            ok = ok or (m >= 0.1 and m > 2 * se)  # one informative gradient among the attacks' suffices
        return ok, (f"agreement (SE) of the attacks' gradients with finite differences of the attacked model's loss, "
                    f"{len(idx)} samples × {directions} directions: " + "; ".join(parts))

    def escalation() -> tuple[bool, str]:
        # the run's own escalation: the rounds that ran, per threat model and ε, and what each broke
        parts = []
        for (threat, eps), ok in sorted(ev.converged.items()):
            rounds = [s for s in ev.stages if s["threat"] == threat and s["epsilon"] == eps and "escalates" in s]
            curve = ", ".join(f"×{s['factor']}: {s['broken']} of {s['attacked']}" for s in rounds) or "no survivors"
            verdict = "converged" if ok else "NOT converged (the rounds ran out while still breaking: an upper bound)"
            name = rounds[0]["escalates"] if rounds else "-"
            parts.append(f"{threat} ε={eps:g}: {name} escalated on the survivors ({curve}): {verdict}")
        return all(ok is not False for ok in ev.converged.values()), "; ".join(parts)

    def converged() -> tuple[bool, str]:
        # one check per threat model: the strongest iterative attack of each threat (lowest robust accuracy at
        # its own largest ε), rerun there at twice its iterations and restarts (a strong ℓ2 attack says nothing about an
        # unconverged ℓ∞ one)
        pool = [s for s in attacks if s.iterative and s.threat in ("linf", "l2")]
        if not pool:
            raise ValueError("no iterative ℓ∞/ℓ2 attack was evaluated")
        idx = ev.indices[:convergence_subset]
        # one point or one sample, compared in samples: robust accuracies are float32 means, whose difference
        # 0.1 − 0.05 exceeds 0.05 (a one-sample change on 20 samples would be flagged)
        limit = max(0.01 * len(idx), 1.0) + 1e-9
        ok, parts = True, []
        for threat in sorted({s.threat for s in pool}):
            rivals = [s for s in pool if s.threat == threat]
            spec = min(rivals, key=lambda s: ev.accuracy((s.name, float(max(s.epsilons))))[0])
            eps = float(max(spec.epsilons))
            base, base_broken = run(spec.attack, f"{spec.name}_x1", "attack_converged", threat, eps, idx)
            double, double_broken = run(scaled_attack(spec.attack, 2), f"{spec.name}_x2", "attack_converged", threat,
                                        eps, idx)
            ok = ok and abs(round(double * len(idx)) - round(base * len(idx))) <= limit
            found = ev.add_breaks(threat, eps, idx, [a or b for a, b in zip(base_broken, double_broken)])
            parts.append(f"{threat}: {spec.name} eps={eps:g} on {len(idx)} samples, robust accuracy {base:.1%} at its "
                         f"budget, {double:.1%} at twice its iterations and restarts"
                         + (f" ({found} more sample(s) broken by these reruns, counted in the worst case)" if found
                            else ""))
        return ok, "; ".join(parts)

    def decision_based() -> tuple[bool, str]:
        # on the samples the white-box attacks left: the only ones where a labels-only attack can show they missed
        # something (masked gradients), and the cheapest place to look
        worst = ev.worst_case_samples()
        threat = next((t for t in ("l2", "linf") if any(k[0] == t for k in worst)), None)
        if decision_subset <= 0 or threat is None:
            raise ValueError("no ℓ2/ℓ∞ threat evaluated (or decision_subset = 0)")
        eps = max(e for (t, e) in worst if t == threat)
        idx = [i for i, ok in zip(ev.indices, worst[(threat, eps)]) if ok][:decision_subset]
        if not idx:
            return True, f"{threat} eps={eps:g}: no sample survived the white-box attacks; nothing to compare"
        attack = decision_attack or HopSkipJump(norm=threat)
        _, broken = run(attack, type(attack).__name__, "decision_based_not_stronger", threat, eps, idx)
        found = ev.add_breaks(threat, eps, idx, broken)
        return found <= 1, (f"{type(attack).__name__} {threat} eps={eps:g} on {len(idx)} samples the white-box attacks "
                            f"left: broke {found} (tolerance one sample)")

    with evaluation_mode(model):  # the checks judge the model as the evaluation did (dropout off, say)
        _check(ev, "large_epsilon_breaks_all", large_eps)
        _check(ev, "gradients_informative", informative)
        if ev.converged:  # the run escalated to convergence itself: its curve is the check
            _check(ev, "attack_converged", escalation)
        elif attacks and convergence_subset > 0:
            _check(ev, "attack_converged", converged)
        if decision_subset > 0:
            _check(ev, "decision_based_not_stronger", decision_based)
    return ev
