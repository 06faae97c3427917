"""Fail-closed evaluation: every way a number could come out too high is an error or is prevented.

Each test names the failure mode it guards against; on the code before the record store each of them
reported robustness that no attack checked (or lost a success)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from torch import nn

from manifold_defense.attacks import FGSM, Attack, Crafted, L2PGD, LinfPGD
from manifold_defense.eval import (
    AttackSpec,
    Evaluation,
    IncompleteEvaluation,
    RecordError,
    evaluate,
    merge_records,
    sanity_checks,
    wilson_interval,
)
from manifold_defense.eval.records import seal
from manifold_defense.validation import InputError


class _FirstPixelModel(nn.Module):
    """Class 1 iff the first pixel is above 0.5: an attack's success is whatever it writes there."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        p = x.flatten(1)[:, 0] * self.w
        return torch.stack([1 - p, p], 1)


class _FlipsFirstPixel(Attack):
    """Sets the first pixel of the first ``breaks(steps, restarts)`` of 20 samples: an attack whose success
    depends on its iterations and restarts exactly as a convergence test needs."""

    norm = "linf"

    def __init__(self, breaks, *, steps: int = 1, restarts: int = 1, value: float = 1.0, log: list | None = None):
        self.breaks, self.steps, self.restarts, self.value = breaks, steps, restarts, value
        self._log = log  # which restarts each call ran with (private: not part of the attack's fingerprint)

    def run(self, model, x, y, epsilon):
        if self._log is not None:
            self._log.append(self.restarts)
        adv = x.clone()
        adv.flatten(1)[: self.breaks(self.steps, self.restarts), 0] = self.value
        return adv


def _convergence_check(attack: Attack):
    """``attack_converged`` on 20 zero images of class 0 behind :class:`_FirstPixelModel`."""
    x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
    model = _FirstPixelModel()
    ev = evaluate(model, x, y, [AttackSpec("flip", attack, [1.0], "linf")], batch_size=20, progress=False)
    sanity_checks(ev, model, x, y, decision_subset=0, convergence_subset=20)
    return ev


def _specs(steps: int = 5):
    return [AttackSpec("fgsm", FGSM(), [0.05, 0.1], "linf", iterative=False),
            AttackSpec("pgd_linf", LinfPGD(steps=steps), [0.1], "linf")]


@pytest.fixture
def batch(digits_test):
    return digits_test.images[:32], digits_test.labels[:32]


class _Band(nn.Module):
    """A 2-pixel toy classifier: class 1 only while the first pixel is within [0.45, 0.55]."""

    input_shape, num_classes = (1, 1, 2), 2

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        inside = ((x[:, 0, 0, 0] - 0.5).abs() <= 0.05).to(x.dtype)
        return torch.stack([1 - inside, inside], 1) * 10 + 0 * self.dummy


class _Ramp(nn.Module):
    """A surrogate whose loss keeps rising with the first pixel (it says nothing about the band)."""

    input_shape, num_classes = (1, 1, 2), 2

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(5.0))

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0, 0, 0]), self.w * x[:, 0, 0, 0]], 1)


class _ConfidentRamp(_Ramp):
    """A surrogate that is never wrong (class 0 by a wide margin) while its loss still rises with the pixel."""

    def forward(self, x):
        return torch.stack([torch.full_like(x[:, 0, 0, 0], 100.0), self.w * x[:, 0, 0, 0]], 1)


class _Deterministic(nn.Module):
    """Logits that change with the batch around a near-tie (what ~1e-6 batch-shape rounding does)."""

    input_shape, num_classes = (1, 1, 2), 2

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.stack([torch.ones(len(x)), torch.ones(len(x)) - 1e-6], 1) + 0 * self.dummy


class TestLostSuccess:
    def test_success_is_looked_for_where_the_surrogate_sees_none(self):
        """The surrogate never misclassifies, so a prefilter on its logits never asked the attacked model;
        the band where the attacked model is wrong lies mid-walk, not at the end."""
        x = torch.tensor([[[[0.1, 0.5]]]])
        y = torch.tensor([0])
        adv = LinfPGD(steps=10, rel_stepsize=0.1, random_start=False).run(_ConfidentRamp(), x, y, 0.8,
                                                                          scorer=_Band()).adversarial
        assert int(_Band()(adv).argmax(1)) == 1, adv
        # with check_every = k the attacked model is still asked every k-th step
        adv = LinfPGD(steps=10, rel_stepsize=0.05, random_start=False, check_every=2).run(
            _ConfidentRamp(), x, y, 0.8, scorer=_Band()).adversarial
        assert int(_Band()(adv).argmax(1)) == 1, adv

    def test_the_search_verdict_counts_on_a_deterministic_model(self):
        class Found(Attack):
            def run(self, model, x, y, epsilon):  # the search saw the model misclassify x
                return Crafted(x, reached=torch.ones(len(x), dtype=torch.bool))

        x, y = torch.full((3, 1, 1, 2), 0.5), torch.zeros(3, dtype=torch.long)
        assert bool(Found()(_Deterministic(), x, y, epsilon=0.1).success.all())

        class Stochastic(_Deterministic):
            class projection:  # noqa: N801 — the attribute a stochastic DefendedModel carries
                stochastic = True

        assert not bool(Found()(Stochastic(), x, y, epsilon=0.1).success.any())  # one fresh draw decides

    def test_nan_logits_are_wrong_not_correct(self, batch):
        class NaNModel(nn.Module):
            input_shape, num_classes = (1, 8, 8), 10

            def forward(self, x):
                out = x.flatten(1)[:, :10] * 0
                out = torch.cat([torch.full_like(out[:, :1], float("nan")), out[:, 1:]], 1)  # argmax of NaN is its index: class 0 would count as "correct"
                return out

        x, y = batch
        y = torch.zeros_like(y)
        ev = evaluate(NaNModel(), x, y, [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False)], progress=False)
        assert ev.accuracy()[0] == 0.0

    def test_autoattack_keeps_its_books_on_the_attacked_model(self):
        from manifold_defense.attacks.adapters import _GradientsFrom

        craft, real = _ConfidentRamp(), _Band()
        m = _GradientsFrom(craft, real)
        x = torch.tensor([[[[0.5, 0.5]]]])
        with torch.no_grad():
            assert torch.equal(m(x), real(x))  # which samples are robust: the attacked model says
        xg = x.clone().requires_grad_(True)
        assert torch.equal(m(xg), craft(xg))  # the gradients: the crafting model's

    def test_a_success_with_a_non_finite_objective_still_counts(self):
        from manifold_defense.inversion import descend

        v0 = torch.zeros(4, 3)
        res = descend(v0, lambda v: v, lambda img, v, rows: v.sum(1) * float("nan"), steps=3, lr=0.1,
                      until=lambda img, v, rows: torch.ones(len(rows), dtype=torch.bool))
        assert bool(res.reached.all())


class TestWorstCase:
    def _records(self):
        clean = {"kind": "clean", "start": 0, "indices": [0, 1], "correct": [True, True], "correct_all": [True, True]}

        def attack(name, eps, broken):
            return {"kind": "attack", "attack": name, "epsilon": eps, "start": 0, "indices": [0, 1], "threat": "linf",
                    "iterative": True, "broken": broken, "broken_any": broken}
        return [clean, attack("a", 0.1, [True, False]), attack("b", 0.2, [False, False])]

    def test_worst_case_is_monotone_in_epsilon(self):
        ev = Evaluation.from_records(self._records(), range(2), [("a", 0.1), ("b", 0.2)])
        worst = ev.worst_case_samples()
        assert worst[("linf", 0.1)] == [False, True]
        assert worst[("linf", 0.2)] == [False, True]  # broken within 0.1, so within 0.2 as well
        d = ev.to_dict()
        assert d["robust_acc"] == 0.5 and d["robustbench"][0]["robust_acc"] in (0.5,)

    def test_two_verdicts_for_one_sample_are_an_error(self):
        records = self._records()
        records.append(dict(records[1], broken=[False, False], broken_any=[False, False]))
        with pytest.raises(RecordError, match="two records for sample 0"):
            Evaluation.from_records(records, range(2), [("a", 0.1), ("b", 0.2)])


class TestLostSuccessBefore:
    def test_pgd_keeps_the_first_iterate_the_attacked_model_misclassifies(self):
        """The highest-loss iterate (on the surrogate) walks past the band where the attacked model is
        wrong; the attack must keep the iterate inside the band."""
        x = torch.tensor([[[[0.1, 0.5]]]])
        y = torch.tensor([0])
        adv = LinfPGD(steps=10, rel_stepsize=0.1, random_start=False).run(_Ramp(), x, y, 0.8, scorer=_Band()).adversarial
        assert int(_Band()(adv).argmax(1)) == 1, adv
        assert 0.45 <= float(adv[0, 0, 0, 0]) <= 0.55

    def test_success_is_scored_on_the_attacked_model(self, digits_classifier, batch):
        x, y = batch
        digits_classifier.eval()
        res = LinfPGD(steps=10)(digits_classifier, x, y, epsilon=0.2)
        with torch.no_grad():
            assert torch.equal(res.success, digits_classifier(res.adversarial).argmax(1) != y)


class TestMissingRecords:
    def test_a_missing_record_is_an_error_not_robust(self, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        lines = (tmp_path / "records.jsonl").read_text().splitlines()
        kept = [ln for ln in lines if not ('"pgd_linf"' in ln and '"start": 16' in ln)]
        records = [json.loads(ln) for ln in kept]
        with pytest.raises(IncompleteEvaluation, match=r"pgd_linf@0.1: 16-31"):
            Evaluation.from_records(records, range(32), [("fgsm", 0.05), ("fgsm", 0.1), ("pgd_linf", 0.1)])

    def test_a_batch_cut_short_by_an_earlier_stop_is_completed_not_reused(self, digits_classifier, batch, tmp_path):
        # batch 0 recorded for samples 0-7 (stop=8); a resume with stop=16 must not take it as covering 0-15: it
        # attacks 8-15 and reports all 16 (it used to stay "COULD NOT RUN" or count 8-15 as robust)
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, stop=8, progress=False)
        before = (tmp_path / "records.jsonl").read_text()
        ev = evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, stop=16, progress=False)
        assert (tmp_path / "records.jsonl").read_text().startswith(before)  # nothing lost or overwritten
        assert ev.indices == list(range(16)) and all(len(v) == 16 for v in ev.robust.values())
        records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
        for key in [("clean", None, None), ("attack", "fgsm", 0.05), ("attack", "fgsm", 0.1), ("attack", "pgd_linf", 0.1)]:
            covered = [i for r in records if (r["kind"], r.get("attack"), r.get("epsilon")) == key for i in r["indices"]]
            assert sorted(covered) == list(range(16)), key  # every sample exactly once

    def test_merging_a_shard_without_an_attack_is_incomplete(self, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path / "a", stop=16, progress=False)
        evaluate(digits_classifier, x, y, _specs()[:1], batch_size=16, out_dir=tmp_path / "b", start=16,
                 progress=False)
        records = merge_records([tmp_path / "a", tmp_path / "b"], tmp_path / "all")
        with pytest.raises(IncompleteEvaluation, match="pgd_linf"):
            Evaluation.from_records(records, range(32), [("fgsm", 0.05), ("fgsm", 0.1), ("pgd_linf", 0.1)])

    def test_a_garbled_line_in_the_middle_is_an_error(self, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        lines = (tmp_path / "records.jsonl").read_text().splitlines()
        lines[1] = lines[1][:20]
        (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(RecordError, match="line 2 is garbled"):
            evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)


class TestFingerprints:
    def test_another_model_in_the_same_folder_is_refused(self, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        before = (tmp_path / "records.jsonl").read_text()
        other = type(digits_classifier)(width=8).eval()
        with pytest.raises(RecordError, match="differs in: model"):
            evaluate(other, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        assert (tmp_path / "records.jsonl").read_text() == before  # nothing recorded is lost or overwritten

    @pytest.mark.parametrize("change", ["budget", "batch_size", "data", "attempts"])
    def test_another_configuration_is_refused(self, change, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        kwargs = {"batch_size": 16, "out_dir": tmp_path, "progress": False}
        specs = _specs()
        if change == "budget":  # a --quick run's records must not stand in for the full budget
            specs = _specs(steps=50)
        elif change == "batch_size":
            kwargs["batch_size"] = 8
        elif change == "data":
            x = x.flip(0)
        else:
            kwargs["attempts"] = 3
        with pytest.raises(RecordError):
            evaluate(digits_classifier, x, y, specs, **kwargs)

    def test_shards_of_different_runs_or_overlapping_shards_are_refused(self, digits_classifier, batch, tmp_path):
        x, y = batch
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path / "a", stop=16, progress=False)
        evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path / "b", stop=32, progress=False)
        with pytest.raises(RecordError, match="overlap"):
            merge_records([tmp_path / "a", tmp_path / "b"], tmp_path / "m1")
        evaluate(digits_classifier, x, y, _specs(steps=9), batch_size=16, out_dir=tmp_path / "c", start=16,
                 progress=False)
        with pytest.raises(RecordError, match="different settings"):
            merge_records([tmp_path / "a", tmp_path / "c"], tmp_path / "m2")

    def test_resumed_notes_match_an_uninterrupted_run(self, digits_classifier, digits_vae, batch, tmp_path):
        from manifold_defense.attacks import BPDA
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        x, y = batch
        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=20)).eval()
        specs = [AttackSpec("bpda", BPDA(steps=2, projection=ProjectionConfig(steps=5)), [0.1], "linf")]
        whole = evaluate(model, x, y, specs, batch_size=16, out_dir=tmp_path / "whole", progress=False)
        evaluate(model, x, y, specs, batch_size=16, out_dir=tmp_path / "parts", stop=16, progress=False)
        resumed = evaluate(model, x, y, specs, batch_size=16, out_dir=tmp_path / "parts", progress=False)
        assert resumed.notes == whole.notes and "surrogate projection" in resumed.notes["bpda"]
        assert resumed.robust == whole.robust


    def test_resumed_examples_match_an_uninterrupted_run(self, digits_classifier, batch, tmp_path):
        # a resume that has nothing left to attack used to leave only the clean row in the report's grid
        x, y = batch
        specs = [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False),
                 AttackSpec("pgd", LinfPGD(steps=2), [0.1], "linf")]
        whole = evaluate(digits_classifier, x, y, specs, batch_size=16, progress=False, examples=4)
        evaluate(digits_classifier, x, y, specs[:1], batch_size=16, out_dir=tmp_path, progress=False, examples=4)
        evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False, examples=4)
        resumed = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False, examples=4)
        assert list(resumed.examples) == list(whole.examples) == ["clean", "linf ε=0.1"]  # per threat model
        for name, imgs in whole.examples.items():
            assert torch.equal(resumed.examples[name], imgs), name

    def test_nested_settings_are_part_of_the_fingerprint(self, digits_class_vaes):
        # an attack's options → its reference projection → the projection's steps: four levels down, and a
        # different value there must be a different attack (it was a type name before)
        from manifold_defense.attacks import ClassConditionalLatentPGD
        from manifold_defense.defended import ProjectionConfig
        from manifold_defense.eval.records import attack_fingerprint

        def fp(steps: int) -> dict:
            attack = ClassConditionalLatentPGD(digits_class_vaes, projection=ProjectionConfig(steps=steps, init="encoder"))
            return attack_fingerprint(AttackSpec("cc", attack, [0.5], "on_manifold_cc"))

        assert fp(50) != fp(10) and fp(50) == fp(50)

    def test_records_of_an_older_revision_are_refused(self, digits_classifier, digits_vae, batch, tmp_path):
        # LatentPGD's scoring changed (revision 1: the search's own verdicts kept) without a hyperparameter
        # showing it: records made before are another attack, refused, never mixed with new ones
        from manifold_defense.attacks import FGSM, LatentPGD
        from manifold_defense.eval.records import attack_fingerprint

        x, y = batch
        spec = AttackSpec("om", LatentPGD(digits_vae, steps=2, latent_stepsize=0.1), [1.0], "on_manifold")
        assert attack_fingerprint(spec)["revision"] == 1
        assert "revision" not in attack_fingerprint(AttackSpec("f", FGSM(), [0.1], "linf"))  # older records valid
        evaluate(digits_classifier, x, y, [spec], batch_size=16, out_dir=tmp_path, progress=False)
        lines = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
        for r in lines:  # as the code before the revision wrote them
            if r["kind"] == "attack":
                old = {k: v for k, v in r["fingerprint"].items() if k != "revision"}
                r["fingerprint"], r["attack_sha"] = old, hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
        # re-sealed, as the older code would have written them: the digest holds, the fingerprint does not
        (tmp_path / "records.jsonl").write_text("".join(json.dumps(seal(r)) + "\n" for r in lines))
        with pytest.raises(RecordError, match="other settings"):
            evaluate(digits_classifier, x, y, [spec], batch_size=16, out_dir=tmp_path, progress=False)


class TestAttempts:
    def test_n_attempts_of_a_randomised_defense(self, digits_classifier, digits_vae, batch):
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        x, y = batch
        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=10, restarts=1, init="random",
                                                                             stochastic=True)).eval()
        ev = evaluate(model, x, y, [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False)], batch_size=16,
                      attempts=4, progress=False)
        for key in (None, ("fgsm", 0.1)):
            assert ev.accuracy(key, attempts=4)[0] <= ev.accuracy(key)[0]
        d = ev.to_dict()
        assert d["attempts"] == 4 and "n_attempts" in d
        with pytest.raises(InputError, match="attempts"):
            evaluate(model, x, y, [AttackSpec("fgsm", FGSM(), [0.1], "linf")], attempts=0)


class TestMinimisation:
    def test_a_minimisation_attack_runs_once_and_is_clipped_per_epsilon(self, digits_classifier, batch):
        calls = []

        class Minimal(Attack):
            norm, minimization = "l2", True

            def run(self, model, x, y, epsilon):
                calls.append(epsilon)
                return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)

        x, y = batch
        out = Minimal().sweep(digits_classifier, x, y, [0.5, 1.0, 3.0])
        assert calls == [3.0] and sorted(out) == [0.5, 1.0, 3.0]
        assert float(out[0.5].norms.max()) <= 0.5 + 1e-5


class TestIntervals:
    def test_wilson_interval_holds_at_small_n(self):
        lo, hi = wilson_interval(0, 20)
        assert lo == 0.0 and 0.15 < hi < 0.17  # not "0.000 ± 0.000"
        lo, hi = wilson_interval(20, 20)
        assert hi == 1.0 and 0.83 < lo < 0.85
        lo, hi = wilson_interval(7, 20)
        assert 0 <= lo < 0.35 < hi <= 1


class TestSanityCanFail:
    def test_useless_gradients_fail_the_gradient_check(self, digits_classifier, digits_vae, batch):
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        x, y = batch
        for gradient, expect in (("none", False), ("implicit", True)):
            model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=30), gradient=gradient).eval()
            ev = evaluate(model, x[:8], y[:8], [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False)],
                          batch_size=8, progress=False)
            sanity_checks(ev, model, x[:8], y[:8], decision_subset=0, gradient_subset=6)
            assert ev.sanity["gradients_informative"] is expect, ev.sanity_details

    def test_an_unconverged_attack_fails_the_convergence_check(self, digits_classifier, batch):
        x, y = batch
        weak = [AttackSpec("pgd_linf", LinfPGD(steps=1, rel_stepsize=0.5, random_start=False), [0.2], "linf")]
        ev = evaluate(digits_classifier, x, y, weak, batch_size=32, progress=False)
        sanity_checks(ev, digits_classifier, x, y, decision_subset=0, convergence_subset=32)
        assert ev.sanity["attack_converged"] is False, ev.sanity_details

    def test_an_unconverged_attack_of_one_threat_is_flagged_beside_a_converged_one(self, digits_classifier, batch):
        # the strongest attack overall (l2, converged) must not vouch for an unconverged linf one
        x, y = batch
        specs = [AttackSpec("pgd_l2", L2PGD(steps=40, rel_stepsize=0.1), [3.0], "l2"),
                 AttackSpec("pgd_linf", LinfPGD(steps=1, rel_stepsize=0.5, random_start=False), [0.2], "linf")]
        ev = evaluate(digits_classifier, x, y, specs, batch_size=32, progress=False)
        assert ev.accuracy(("pgd_l2", 3.0))[0] < ev.accuracy(("pgd_linf", 0.2))[0]
        sanity_checks(ev, digits_classifier, x, y, decision_subset=0, convergence_subset=32)
        assert ev.sanity["attack_converged"] is False, ev.sanity_details
        l2, linf = ev.sanity_details["attack_converged"].split("; ")
        assert l2.startswith("l2: pgd_l2") and linf.startswith("linf: pgd_linf")
        rates = lambda part: [float(v) for v in re.findall(r"([\d.]+)% at", part)]  # noqa: E731
        assert abs(rates(l2)[0] - rates(l2)[1]) <= 100 / 32 + 1e-6  # the l2 attack is the converged one
        assert abs(rates(linf)[0] - rates(linf)[1]) > 100 / 32  # the linf one is what the check flags

    def test_a_one_sample_change_on_twenty_samples_counts_as_converged(self):
        # 2/20 robust at the budget, 1/20 at twice the steps: one sample, within the tolerance (float32 means
        # once made this 0.0500000007 > 0.05 and flagged it)
        ev = _convergence_check(_FlipsFirstPixel(lambda steps, restarts: 18 if steps == 1 else 19))
        assert ev.sanity["attack_converged"] is True, ev.sanity_details["attack_converged"]
        assert "10.0% at its budget, 5.0% at twice" in ev.sanity_details["attack_converged"]

    def test_an_attack_that_more_restarts_still_improve_fails_the_convergence_check(self):
        # more steps change nothing, more restarts break 4 more of 20: unconverged (the dead-zone row's ℓ∞
        # attack was of this kind; a check that doubled iterations only passed it)
        ev = _convergence_check(_FlipsFirstPixel(lambda steps, restarts: 10 if restarts == 1 else 14, steps=10))
        assert ev.sanity["attack_converged"] is False, ev.sanity_details["attack_converged"]
        assert "50.0% at its budget, 30.0% at twice its iterations and restarts" in ev.sanity_details["attack_converged"]

    def test_samples_the_convergence_check_breaks_count_in_the_worst_case(self):
        # the check's rerun at twice the restarts breaks 4 samples the evaluation left robust: its adversarial
        # inputs are real, so the worst case must not report those samples robust (it once did: .31 reported on
        # the dead-zone row while the check's rerun had broken three more of its 32 images)
        x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
        model = _FirstPixelModel()
        attack = _FlipsFirstPixel(lambda steps, restarts: 10 if restarts == 1 else 14, steps=10, value=0.9)
        ev = evaluate(model, x, y, [AttackSpec("flip", attack, [0.9], "linf")], batch_size=20, progress=False)
        assert ev.worst_case()[("linf", 0.9)][0] == pytest.approx(0.5)
        sanity_checks(ev, model, x, y, decision_subset=0, convergence_subset=20)
        assert ev.accuracy(("flip", 0.9))[0] == pytest.approx(0.5)  # the attack's own column is its own
        assert ev.worst_case()[("linf", 0.9)][0] == pytest.approx(0.3)
        assert "4 more sample(s) broken by these reruns" in ev.sanity_details["attack_converged"]
        assert ev.to_dict()["broken_by_sanity_checks"]["linf@0.9"] == list(range(14))

    def test_samples_the_decision_based_attack_breaks_count_in_the_worst_case(self):
        x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
        model = _FirstPixelModel()
        none = _FlipsFirstPixel(lambda steps, restarts: 0)
        ev = evaluate(model, x, y, [AttackSpec("none", none, [0.9], "linf")], batch_size=20, progress=False)
        sanity_checks(ev, model, x, y, decision_subset=20, convergence_subset=0,
                      decision_attack=_FlipsFirstPixel(lambda steps, restarts: 5, value=0.9))
        assert ev.sanity["decision_based_not_stronger"] is False
        assert ev.worst_case()[("linf", 0.9)][0] == pytest.approx(0.75)

    def test_checks_resume_from_their_records(self, tmp_path):
        # behind a costly projection the checks' reruns take hours: with out_dir a rerun of the checks (a killed
        # run resumed) reads their records instead of attacking again, with the same verdicts and breaks
        x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
        model, calls = _FirstPixelModel(), []
        attack = _FlipsFirstPixel(lambda steps, restarts: 5 if restarts == 1 else 7, steps=10, value=0.9, log=calls)
        verdicts = []
        for _ in range(2):
            ev = evaluate(model, x, y, [AttackSpec("flip", attack, [0.9], "linf")], batch_size=20, progress=False)
            calls.clear()
            sanity_checks(ev, model, x, y, decision_subset=0, convergence_subset=20, out_dir=tmp_path / "checks",
                          batch_size=10)
            verdicts.append((dict(ev.sanity_details), ev.worst_case()[("linf", 0.9)][0], list(calls)))
        assert verdicts[0][2] == [1, 1, 2, 2]  # first time: base and doubled rerun, two batches each
        assert verdicts[1][2] == []  # resumed: no attack ran
        assert verdicts[0][:2] == verdicts[1][:2]
        assert verdicts[1][1] == pytest.approx(0.3)  # per batch of 10, 7 broken: the records' breaks still count
        assert (tmp_path / "checks" / "attack_converged" / "0-20" / "records.jsonl").is_file()  # per sample set

    def test_check_records_of_another_model_are_refused_not_reused(self, tmp_path):
        # a check folder left by another model must not vouch for this one: the check cannot run, and says so
        x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
        attack = _FlipsFirstPixel(lambda steps, restarts: 5 if restarts == 1 else 7, steps=10, value=0.9)
        for scale, expect in ((1.0, False), (2.0, None)):
            model = _FirstPixelModel()
            model.w.data.fill_(scale)
            ev = evaluate(model, x, y, [AttackSpec("flip", attack, [0.9], "linf")], batch_size=20, progress=False)
            sanity_checks(ev, model, x, y, decision_subset=0, convergence_subset=20, out_dir=tmp_path)
            assert ev.sanity["attack_converged"] is expect, ev.sanity_details["attack_converged"]
        assert "RecordError" in ev.sanity_details["attack_converged"]

    def test_scaled_attack_doubles_nested_iterations_and_restarts(self):
        from manifold_defense.attacks.adaptive import BPDA
        from manifold_defense.eval.sanity import scaled_attack

        attack = BPDA(norm="linf", steps=7, restarts=2, range_restarts=3, eot=5)
        doubled = scaled_attack(attack, 2)
        assert (doubled.pgd.steps, doubled.pgd.restarts, doubled.range_restarts) == (14, 4, 6)
        assert doubled.pgd.eot == 5 and doubled.pgd.random_start is True  # not an iteration count; bool untouched
        assert (attack.pgd.steps, attack.pgd.restarts, attack.range_restarts) == (7, 2, 3)  # the original is kept

    def test_a_check_that_cannot_run_is_reported_not_raised(self, digits_classifier, batch, tmp_path):
        from manifold_defense.eval import write_report

        class Broken(Attack):
            norm = "l2"

            def run(self, model, x, y, epsilon):
                raise AssertionError("foolbox: is_adversarial(x_advs) does not hold")

        x, y = batch
        ev = evaluate(digits_classifier, x, y, [AttackSpec("pgd_l2", LinfPGD(steps=3), [0.1], "linf")],
                      batch_size=32, progress=False)
        sanity_checks(ev, digits_classifier, x, y, decision_subset=4, decision_attack=Broken())
        assert ev.sanity["decision_based_not_stronger"] is None
        assert ev.sanity_details["decision_based_not_stronger"].startswith("could not run: AssertionError")
        assert "COULD NOT RUN" in write_report(ev, tmp_path)["markdown"].read_text()
