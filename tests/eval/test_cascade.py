"""Suites as survivor cascades with escalation: each attack runs on exactly the samples every earlier one left,
the records say which, and a record that skips a survivor or claims a sample it did not attack fails closed.

Toy setting: sample ``i`` carries its id in its second pixel, the model answers class 1 iff the first pixel is
above 0.5, and an attack "breaks" exactly the ids it is told to (setting the first pixel), logging the ids it
was asked to attack."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from manifold_defense.attacks import Attack
from manifold_defense.eval import (
    SUITES,
    AttackSpec,
    Evaluation,
    IncompleteEvaluation,
    Plan,
    RecordError,
    evaluate,
    sanity_checks,
    write_report,
)
from manifold_defense.eval.records import read_records, seal
from manifold_defense.validation import InputError

N = 20


class _FirstPixel(nn.Module):
    """Class 1 iff the first pixel is above 0.5."""

    input_shape, num_classes = (1, 1, 2), 2

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        p = x[:, 0, 0, 0] * self.w
        return torch.stack([1 - p, p], 1)


def _ids(x: torch.Tensor) -> list[int]:
    return [round(float(v) * 100) for v in x[:, 0, 0, 1]]


class _Breaks(Attack):
    """Breaks the samples whose ids ``breaks(steps, seed)`` returns; logs the ids of every call (private)."""

    norm = "linf"

    def __init__(self, breaks, *, steps: int = 1, seed: int = 0, log: list | None = None) -> None:
        self.breaks, self.steps, self.seed, self._log = breaks, steps, seed, log

    def run(self, model, x, y, epsilon):
        ids = _ids(x)
        if self._log is not None:
            self._log.append(ids)
        adv = x.clone()
        hit = set(self.breaks(self.steps, self.seed))
        for k, i in enumerate(ids):
            if i in hit:
                adv[k, 0, 0, 0] = 0.9
        return adv


def _data():
    x = torch.zeros(N, 1, 1, 2)
    x[:, 0, 0, 1] = torch.arange(N) / 100
    return x, torch.zeros(N, dtype=torch.long)


def _plan(first, second, *, rounds: int = 0, cascade: bool = True, logs=None):
    logs = logs if logs is not None else ([], [])
    specs = [AttackSpec("first", _Breaks(first, log=logs[0]), [0.9], "linf"),
             AttackSpec("second", _Breaks(second, log=logs[1]), [0.9], "linf")]
    return Plan(None, specs, cascade=cascade, escalation_rounds=rounds)


def _all(log):
    return sorted(i for call in log for i in call)


class TestSmoke:
    def test_each_attack_runs_on_the_survivors_only(self, tmp_path):
        x, y = _data()
        logs = ([], [])
        ev = evaluate(_FirstPixel(), x, y, suite=_plan(lambda s, r: range(5), lambda s, r: [7, 8], logs=logs),
                      batch_size=8, out_dir=tmp_path, progress=False)
        assert _all(logs[0]) == list(range(N)) and _all(logs[1]) == list(range(5, N))  # never a broken sample
        records = read_records(tmp_path / "records.jsonl")
        second = [i for r in records if r.get("attack") == "second" for i in r["indices"]]
        assert second == list(range(5, N))  # the records say exactly which samples it attacked
        assert ev.worst_case()[("linf", 0.9)][0] == pytest.approx(13 / N)
        assert [(s["attack"], s["attacked"], s["broken"], s["left"]) for s in ev.stages] == [
            ("first", N, 5, 15), ("second", 15, 2, 13)]
        # cumulative, as AutoAttack reports: robust after each attack and every earlier one
        assert ev.accuracy(("first", 0.9))[0] == pytest.approx(15 / N)
        assert ev.accuracy(("second", 0.9))[0] == pytest.approx(13 / N)
        assert "What each attack added" in write_report(ev, tmp_path)["markdown"].read_text()

    def test_escalation_doubles_until_a_round_breaks_none(self):
        x, y = _data()
        # the attack that broke the largest share of what it attacked ("first": 5 of 20) is escalated: 2 steps
        # (round 1) also find id 10, 4 steps (round 2) id 11, 8 steps (round 3) nothing new
        found = {1: [0, 1, 2, 3, 4], 2: [0, 1, 2, 3, 4, 10], 4: [0, 1, 2, 3, 4, 10, 11], 8: [0, 1, 2, 3, 4, 10, 11]}
        logs = ([], [])
        plan = _plan(lambda s, r: found[s], lambda s, r: [7], rounds=4, logs=logs)
        ev = evaluate(_FirstPixel(), x, y, suite=plan, batch_size=20, progress=False)
        rounds = [s for s in ev.stages if "escalates" in s]
        assert [(s["attack"], s["attacked"], s["broken"]) for s in rounds] == [
            ("first×2", 14, 1), ("first×4", 13, 1), ("first×8", 12, 0)]
        assert ev.converged == {("linf", 0.9): True} and ev.worst_case()[("linf", 0.9)][0] == pytest.approx(12 / N)
        survivors = [i for i in range(5, N) if i != 7]
        assert logs[0][1:] == [survivors, [i for i in survivors if i != 10], [i for i in survivors if i < 10 or i > 11]]
        sanity_checks(ev, _FirstPixel(), x, y, decision_subset=0, gradient_subset=0)
        assert ev.sanity["attack_converged"] is True, ev.sanity_details
        # out of rounds while still breaking: not converged, and the check says so
        ev = evaluate(_FirstPixel(), x, y, suite=_plan(lambda s, r: found[s], lambda s, r: [7], rounds=1),
                      batch_size=20, progress=False)
        assert ev.converged == {("linf", 0.9): False}
        sanity_checks(ev, _FirstPixel(), x, y, decision_subset=0, gradient_subset=0)
        assert ev.sanity["attack_converged"] is False and "NOT converged" in ev.sanity_details["attack_converged"]

    def test_threat_models_run_side_by_side_and_a_larger_eps_waits(self):
        x, y = _data()
        calls: list[tuple[str, float, list[int]]] = []

        class Logged(_Breaks):
            def __init__(self, name, breaks, norm):
                super().__init__(breaks)
                self.name, self.norm = name, norm

            def run(self, model, x, y, epsilon):
                calls.append((self.name, epsilon, _ids(x)))
                return super().run(model, x, y, epsilon)

        specs = [AttackSpec("a", Logged("a", lambda s, r: range(5), "linf"), [0.9, 0.95], "linf"),
                 AttackSpec("b", Logged("b", lambda s, r: [7, 8], "linf"), [0.9, 0.95], "linf"),
                 AttackSpec("c", Logged("c", lambda s, r: [10, 11, 12], "l2"), [1.0], "l2")]
        ev = evaluate(_FirstPixel(), x, y, suite=Plan(None, specs, cascade=True, escalation_rounds=0), batch_size=20,
                      progress=False)
        order = [(name, eps) for name, eps, _ in calls]
        # l2's only stage runs with linf's first one, not after linf's whole chain ...
        assert order.index(("c", 1.0)) < order.index(("b", 0.9)), order
        # ... while linf at 0.95 still waits for 0.9: it attacks only what both attacks left there
        seen = {(name, eps): ids for name, eps, ids in calls}
        assert seen[("a", 0.95)] == [i for i in range(N) if i not in (0, 1, 2, 3, 4, 7, 8)]
        assert ev.worst_case()[("linf", 0.95)][0] == pytest.approx(13 / N)
        assert ev.worst_case()[("l2", 1.0)][0] == pytest.approx(17 / N)

    def test_escalation_draws_fresh_restarts(self):
        from manifold_defense.attacks import BPDA
        from manifold_defense.eval.suites import escalated_attack

        attack = BPDA(norm="linf", steps=7, restarts=2, range_restarts=3)
        twice = escalated_attack(attack, 4, 2)
        assert twice.pgd.steps == 28 and twice.pgd.restarts == 2 and twice.pgd.seed != attack.pgd.seed
        assert attack.pgd.steps == 7  # the original is untouched


def _five(steps, seed):
    return range(5)


def _seven_eight(steps, seed):
    return [7, 8]


class TestFailClosed:
    def _run(self, tmp_path, logs=None):
        x, y = _data()
        plan = _plan(_five, _seven_eight, logs=logs)
        evaluate(_FirstPixel(), x, y, suite=plan, batch_size=8, out_dir=tmp_path, progress=False)
        return x, y, plan

    def _rewrite(self, tmp_path, change):
        path = tmp_path / "records.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(seal(r)) + "\n" for r in change(records)))
        return read_records(path)

    def test_a_survivor_the_cascade_skipped_is_incomplete(self, tmp_path):
        x, y, plan = self._run(tmp_path)

        def drop_sample_12(records):
            for r in records:
                if r.get("attack") == "second" and 12 in r["indices"]:
                    k = r["indices"].index(12)
                    for f in ("indices", "broken", "broken_any"):
                        r[f] = r[f][:k] + r[f][k + 1:]
                    r["start"] = r["indices"][0]
            return records

        records = self._rewrite(tmp_path, drop_sample_12)
        with pytest.raises(IncompleteEvaluation, match="second@0.9: 12"):
            Evaluation.from_records(records, range(N), plan)
        logs = ([], [])  # a rerun attacks exactly the sample that is missing, nothing else
        ev = evaluate(_FirstPixel(), x, y, suite=_plan(_five, _seven_eight, logs=logs), batch_size=8,
                      out_dir=tmp_path, progress=False)
        assert logs == ([], [[12]]) and ev.worst_case()[("linf", 0.9)][0] == pytest.approx(13 / N)

    def test_a_record_claiming_a_sample_it_did_not_attack_is_refused(self, tmp_path):
        x, y, plan = self._run(tmp_path)

        def claim_sample_3(records):  # 3 was broken by "first": the cascade never gave it to "second"
            for r in records:
                if r.get("attack") == "second" and r["indices"][0] == 5:
                    r["indices"], r["broken"], r["broken_any"] = [3] + r["indices"], [False] + r["broken"], \
                        [False] + r["broken_any"]
                    r["start"] = 3
            return records

        records = self._rewrite(tmp_path, claim_sample_3)
        with pytest.raises(RecordError, match="claim samples the cascade did not attack"):
            Evaluation.from_records(records, range(N), plan)

    def test_a_changed_suite_is_refused_and_nothing_is_lost(self, tmp_path):
        x, y, _ = self._run(tmp_path)
        before = (tmp_path / "records.jsonl").read_text()
        other = _plan(_five, _seven_eight, rounds=2)
        with pytest.raises(RecordError, match="suite"):
            evaluate(_FirstPixel(), x, y, suite=other, batch_size=8, out_dir=tmp_path, progress=False)
        assert (tmp_path / "records.jsonl").read_text() == before

    def test_columns_attack_every_sample(self, tmp_path):
        x, y = _data()
        logs = ([], [])
        ev = evaluate(_FirstPixel(), x, y, suite=_plan(lambda s, r: range(5), lambda s, r: [3, 7], cascade=False,
                                                        logs=logs), batch_size=8, progress=False)
        assert _all(logs[1]) == list(range(N))
        assert ev.accuracy(("second", 0.9))[0] == pytest.approx(18 / N)  # its own column
        assert ev.worst_case()[("linf", 0.9)][0] == pytest.approx(14 / N)


class TestException:
    def test_bad_suites_and_workers(self, digits_classifier, digits_test):
        x, y = digits_test.images[:8], digits_test.labels[:8]
        with pytest.raises(InputError, match="unknown suite"):
            evaluate(digits_classifier, x, y, suite="strongest")
        with pytest.raises(InputError, match="workers"):
            evaluate(digits_classifier, x, y, suite="standard", workers=0)
        with pytest.raises(InputError, match="at most 1 workers"):
            evaluate(digits_classifier, x, y, suite="standard", workers=2, batch_size=8)
        with pytest.raises(InputError, match="no threat model"):
            evaluate(digits_classifier, x, y, suite="standard", epsilons={"l3": [1.0]})
        with pytest.raises(InputError, match="a suite or attacks"):
            evaluate(digits_classifier, x, y, [AttackSpec("f", _Breaks(lambda s, r: []), [0.1], "linf")],
                     suite="standard")

    def test_a_stochastic_projection_needs_the_rand_suite(self, digits_classifier, digits_vae, digits_test):
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(stochastic=True))
        with pytest.raises(InputError, match="rand"):
            evaluate(model, digits_test.images[:8], digits_test.labels[:8], suite="standard")

    def test_a_wrapped_defended_model_is_refused_by_a_suite(self, digits_classifier, digits_vae, digits_test):
        """A suite on a module around a ``DefendedModel`` would skip every attack that needs the projection."""
        from manifold_defense.defended import DefendedModel

        wrapped = nn.Sequential(nn.Identity(), DefendedModel(digits_classifier, digits_vae))
        wrapped.input_shape, wrapped.num_classes = digits_classifier.input_shape, digits_classifier.num_classes
        with pytest.raises(InputError, match="DefendedModel inside Sequential"):
            evaluate(wrapped, digits_test.images[:8], digits_test.labels[:8], suite="standard")


class _Quantized(nn.Module):
    """A classifier behind input quantisation (rounding to eighths): gradient zero almost everywhere, its decisions
    those of the classifier on nearby inputs (Athalye et al. 2018's shattered gradients)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.input_shape, self.num_classes = classifier.input_shape, classifier.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.round(x * 8) / 8)


class TestSuites:
    def test_suites_are_named_and_versioned(self):
        assert set(SUITES) == {"standard", "rand", "columns"}
        standard = SUITES["standard"]
        assert standard.cascade and standard.escalation_rounds > 0 and standard.version >= 1
        linf = [s.attack for s in standard.stages["linf"]]
        assert linf[0] == "fgsm_transfer" and "pgd_linf_implicit" in linf and "pgd_linf" in linf
        assert "latent_reparam_linf" not in linf  # dropped: broke nothing others missed (module docstring)
        assert "autoattack_rand_linf" in linf  # v3 dropped it; on one row it broke what the others left (v4)
        assert linf.index("autoattack_rand_linf") > linf.index("pgd_linf_implicit")  # the weaker one after (v5)
        assert not SUITES["columns"].cascade and SUITES["rand"].attempts > 1

    def test_an_undefended_model_gets_autoattack_at_its_published_budget(self, digits_classifier, digits_vae,
                                                                         digits_class_vaes):
        """v6: AutoAttack 'standard' (100 iterations whatever the budget) in both threat models of an undefended
        model, instead of 'rand'; a defended model keeps 'rand' and no Square."""
        from manifold_defense.defended import DefendedModel
        from manifold_defense.eval import AttackBudget, build_plan

        plan = build_plan("standard", digits_classifier, budget=AttackBudget.quick(), threats=["linf", "l2"])
        aa = {s.name: s.attack for s in plan.specs if s.name.startswith("autoattack")}
        assert set(aa) == {"autoattack_linf", "autoattack_rand_linf", "autoattack_l2"}  # v5's 'rand' stays (v7)
        assert all(aa[k].version == "standard" and aa[k].n_iter == 100 for k in ("autoattack_linf", "autoattack_l2"))
        defended = build_plan("standard", DefendedModel(digits_classifier, digits_vae), threats=["linf", "l2"])
        assert [s.name for s in defended.specs if s.name.startswith("autoattack")] == ["autoattack_rand_linf"]
        from manifold_defense.synthesis import AnalysisBySynthesis  # a generator in its forward too

        abs_plan = build_plan("standard", AnalysisBySynthesis(digits_class_vaes), threats=["linf", "l2"])
        assert [s.name for s in abs_plan.specs if s.name.startswith("autoattack")] == ["autoattack_rand_linf"]

    @pytest.mark.slow
    def test_a_gradient_masked_undefended_model_is_broken_by_the_query_attack(self, digits_classifier, digits_test,
                                                                              tmp_path):
        """Input quantisation zeroes every gradient: FGSM and PGD break only what their random starts hit, and a
        suite without a query attack reports nearly the clean accuracy. AutoAttack's Square breaks it (fails with
        v5's stages)."""
        from manifold_defense.eval import AttackBudget

        model = _Quantized(digits_classifier).eval()
        x, y = digits_test.images[:16], digits_test.labels[:16]
        ev = evaluate(model, x, y, suite="standard", budget=AttackBudget.quick(), threats=["linf"], batch_size=16,
                      out_dir=tmp_path, progress=False)
        by_name = {s["attack"]: s for s in ev.stages}
        gradient_breaks = sum(s["broken"] for n, s in by_name.items() if not n.startswith("autoattack"))
        # measured: PGD's random starts broke 4 of 16, AutoAttack the other 12
        assert by_name["autoattack_linf"]["broken"] >= 8 > gradient_breaks
        assert ev.worst_case()[("linf", 0.3)][0] <= 0.25 < ev.accuracy()[0] - 0.5

    @pytest.mark.slow
    def test_standard_on_a_defended_model(self, digits_classifier, digits_vae, digits_test, tmp_path):
        from manifold_defense.defended import DefendedModel
        from manifold_defense.eval import AttackBudget

        model = DefendedModel(digits_classifier, digits_vae).eval()
        x, y = digits_test.images[:24], digits_test.labels[:24]
        ev = evaluate(model, x, y, suite="standard", budget=AttackBudget.quick(), threats=["linf"], batch_size=12,
                      out_dir=tmp_path, progress=False)
        assert ev.suite["name"] == "standard" and json.loads((tmp_path / "run.json").read_text())["suite"] == ev.suite
        names = [s["attack"] for s in ev.stages if "escalates" not in s]
        assert names == ["fgsm_transfer", "pgd_linf", "pgd_linf_implicit", "autoattack_rand_linf"]
        attacked = [s["attacked"] for s in ev.stages]
        assert attacked == sorted(attacked, reverse=True) and attacked[-1] < attacked[0]  # survivors only
        worst = ev.worst_case()[("linf", 0.3)][0]
        assert worst <= min(ev.accuracy((n, 0.3))[0] for n in names) and worst < ev.accuracy()[0] - 0.3
        assert ev.converged[("linf", 0.3)] is not None
