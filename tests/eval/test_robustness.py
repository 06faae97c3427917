"""Robustness evaluation: resumable records, shards, worst case, sanity checks and reports."""

import json

import pytest

from manifold_defense.attacks import FGSM, L2PGD, LinfPGD
from manifold_defense.eval import AttackSpec, Evaluation, evaluate, merge_records, sanity_checks, write_report
from manifold_defense.validation import InputError


def _specs():
    return [AttackSpec("fgsm", FGSM(), [0.05, 0.1], "linf", iterative=False),
            AttackSpec("pgd_linf", LinfPGD(steps=40, restarts=4), [0.05, 0.1], "linf"),
            AttackSpec("pgd_l2", L2PGD(steps=20, rel_stepsize=0.2), [0.5], "l2")]


class TestSmoke:
    def test_undefended_passes_sanity(self, digits_classifier, digits_test, tmp_path):
        x, y = digits_test.images[:48], digits_test.labels[:48]
        ev = evaluate(digits_classifier, x, y, _specs(), batch_size=16, out_dir=tmp_path, progress=False)
        clean, _, n = ev.accuracy()
        assert n == 48 and clean >= 0.9
        for key in ev.robust:
            assert ev.accuracy(key)[0] <= clean
        assert ev.worst_case()[("linf", 0.1)][0] <= min(ev.accuracy(("fgsm", 0.1))[0],
                                                        ev.accuracy(("pgd_linf", 0.1))[0])
        sanity_checks(ev, digits_classifier, x, y)
        assert all(ev.sanity.values()), ev.sanity_details
        paths = write_report(ev, tmp_path, title="digits undefended")
        report = json.loads(paths["json"].read_text())
        assert report["n"] == 48 and "pgd_linf@0.1" in report["robust"] and "linf@0.1" in report["worst_case"]
        assert "PASS" in paths["markdown"].read_text() and paths["plot"].stat().st_size > 5000
        assert "decision_based_not_stronger" in ev.sanity and "HopSkipJump" in ev.sanity_details["decision_based_not_stronger"]
        assert paths["examples"].stat().st_size > 5000 and len(ev.examples["clean"]) == 8


class TestSanityChecks:
    def test_a_model_left_in_training_mode_is_judged_in_eval_mode_and_given_back(self, digits_classifier, digits_test):
        # digits-classifier has dropout: judged in training mode its answers would be random draws
        x, y = digits_test.images[:32], digits_test.labels[:32]
        specs = [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False)]
        digits_classifier.eval()
        reference = evaluate(digits_classifier, x, y, specs, batch_size=16, progress=False)
        digits_classifier.train()
        try:
            ev = evaluate(digits_classifier, x, y, specs, batch_size=16, progress=False)
            sanity_checks(ev, digits_classifier, x, y, subset=8, decision_subset=0, gradient_subset=2, directions=4)
            assert digits_classifier.training and all(m.training for m in digits_classifier.modules())
        finally:
            digits_classifier.eval()
        assert ev.clean == reference.clean and ev.robust == reference.robust

    def test_masked_gradients_fail_the_checks(self, digits_classifier, digits_vae, digits_test, tmp_path):
        """Zero gradients (Defense-GAN as first evaluated): white-box PGD finds nothing, the decision-based
        attack does, and the report says so."""
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        masked = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=40, restarts=2), gradient="none")
        x, y = digits_test.images[:16], digits_test.labels[:16]
        ev = evaluate(masked, x, y, [AttackSpec("pgd_l2", L2PGD(steps=5, random_start=False), [3.0], "l2")],
                      batch_size=16, out_dir=tmp_path, progress=False, examples=4)
        sanity_checks(ev, masked, x, y, subset=8, decision_subset=8)
        assert ev.sanity["gradients_informative"] is False, ev.sanity_details
        assert ev.sanity["decision_based_not_stronger"] is False, ev.sanity_details
        assert "clean → projected" in ev.examples  # the model has project(): projections are shown too
        assert "**FAIL**" in write_report(ev, tmp_path)["markdown"].read_text()

    def test_gradient_agreement_exact_and_shared(self, digits_classifier, digits_test):
        """The model's own gradient agrees with its finite differences (~1; below where [0, 1] clips the
        step), another model's does not; several gradient models share one finite-difference pass and give
        the rows of separate calls."""
        import torch

        from manifold_defense.eval import gradient_agreement

        x, y = digits_test.images[:8], digits_test.labels[:8]
        other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
        torch.manual_seed(0)
        both = gradient_agreement([digits_classifier, other], digits_classifier, x, y, h=1e-3)
        assert both.shape == (2, 8) and both[0].mean() > 0.9 and both[1].mean().abs() < 0.5
        for row, m in zip(both, [digits_classifier, other]):
            assert torch.allclose(row, gradient_agreement(m, digits_classifier, x, y, h=1e-3), atol=1e-5)

    def test_failed_check_is_flagged(self, digits_classifier, digits_test):
        from manifold_defense.eval.robustness import Evaluation

        ev = Evaluation(indices=[0, 1, 2, 3], clean={i: True for i in range(4)},
                        robust={("pgd", 0.1): {0: False, 1: False, 2: True, 3: True},
                                ("pgd", 0.3): {0: True, 1: True, 2: True, 3: True}},
                        threats={"pgd": "linf"}, iterative={"pgd": True})
        sanity_checks(ev)
        assert ev.sanity["monotone_in_epsilon"] is False


class TestResume:
    def test_skips_finished_batches(self, digits_classifier, digits_test, tmp_path):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        specs = _specs()[:1]
        first = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, stop=16, progress=False)
        lines = (tmp_path / "records.jsonl").read_text().splitlines()
        assert len(lines) == 1 + 2  # clean + two epsilons for the first batch
        (tmp_path / "records.jsonl").write_text("\n".join(lines) + '\n{"kind": "cle')  # a torn last write
        full = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False)
        assert len(full.indices) == 32 and full.clean.keys() >= first.clean.keys()


class TestShards:
    def test_shards_merge(self, digits_classifier, digits_test, tmp_path):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        specs = _specs()[1:2]
        a = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path / "a", start=0, stop=16,
                     progress=False)
        b = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path / "b", start=16, stop=32,
                     progress=False)
        records = merge_records([tmp_path / "a", tmp_path / "b"], tmp_path / "all")
        merged = Evaluation.from_records(records, range(32), [("pgd_linf", 0.05), ("pgd_linf", 0.1)])
        assert merged.indices == list(range(32))
        key = ("pgd_linf", 0.05)
        assert merged.accuracy(key)[0] == pytest.approx((a.accuracy(key)[0] + b.accuracy(key)[0]) / 2)


class TestException:
    def test_exception(self, digits_classifier, digits_test):
        x, y = digits_test.images[:4], digits_test.labels[:4]
        with pytest.raises(InputError, match="non-negative"):
            evaluate(digits_classifier, x, y, [AttackSpec("f", FGSM(), [-0.1], "linf")])
        with pytest.raises(InputError, match="at least one"):
            evaluate(digits_classifier, x, y, [])
        with pytest.raises(InputError, match="empty index range"):
            evaluate(digits_classifier, x, y, _specs(), start=4)
        with pytest.raises(InputError, match=r"shape \(4,\)"):
            evaluate(digits_classifier, x, y[:2], _specs())
        with pytest.raises(InputError, match="empty batch"):
            evaluate(digits_classifier, x[:0], y[:0], _specs())
        with pytest.raises(InputError, match="outside"):
            evaluate(digits_classifier, x * 3, y, _specs())


class TestJudges:
    def test_judges_report_whether_the_label_held(self, digits_classifier, digits_test, tmp_path):
        import torch

        from manifold_defense import zoo

        x, y = digits_test.images[:32], digits_test.labels[:32]
        robust = zoo.get("digits-robust-l2", progress=False)

        class Constant(torch.nn.Module):  # a judge that always answers 0: agrees only on the zeros
            input_shape, num_classes = (1, 8, 8), 10

            def forward(self, v):
                return torch.nn.functional.one_hot(torch.zeros(len(v), dtype=torch.long), 10).float()

        specs = [AttackSpec("pgd_l2", L2PGD(steps=20, rel_stepsize=0.2), [1.5], "l2")]
        ev = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False,
                      judges={"robust": robust, "zero": Constant()})
        agree = ev.to_dict()["judge_agreement"]["pgd_l2@1.5"]
        assert agree["zero"]["all"]["accuracy"] == pytest.approx(float((y == 0).float().mean()))
        # pixel PGD against a standard model at ε = 1.5 mostly does not fool the robust judge
        assert agree["robust"]["all"]["n"] == 32 and agree["robust"]["broken"]["accuracy"] > 0.5
        # resumed from the records: the same agreement; other judges are another run
        again = evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False,
                         judges={"robust": robust, "zero": Constant()})
        assert again.to_dict()["judge_agreement"] == ev.to_dict()["judge_agreement"]
        from manifold_defense.eval.records import RecordError

        with pytest.raises(RecordError):
            evaluate(digits_classifier, x, y, specs, batch_size=16, out_dir=tmp_path, progress=False,
                     judges={"robust": robust})

    def test_judge_must_not_be_the_attacked_model(self, digits_classifier, digits_test):
        x, y = digits_test.images[:4], digits_test.labels[:4]
        with pytest.raises(InputError, match="independent"):
            evaluate(digits_classifier, x, y, _specs(), progress=False, judges={"self": digits_classifier})

    def test_judge_with_the_attacked_weights_is_refused(self, digits_classifier, digits_vae, digits_test):
        # a copy of the attacked classifier, or a defended model's own classifier, is the attacked model too
        import copy

        from manifold_defense.defended import DefendedModel, ProjectionConfig

        x, y = digits_test.images[:4], digits_test.labels[:4]
        with pytest.raises(InputError, match="independent"):
            evaluate(digits_classifier, x, y, _specs(), progress=False, judges={"copy": copy.deepcopy(digits_classifier)})
        defended = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=5)).eval()
        with pytest.raises(InputError, match="independent"):
            evaluate(defended, x, y, _specs(), progress=False, judges={"own": digits_classifier})

    def test_one_budget_unit_per_threat(self, digits_classifier, digits_class_vaes, digits_test):
        # a latent-ℓ∞ η under an image-ℓ2 threat would enter that threat's worst case as an image ε
        from manifold_defense.attacks import ClassConditionalLatentPGD

        x, y = digits_test.images[:4], digits_test.labels[:4]
        specs = [AttackSpec("pgd", L2PGD(steps=2), [1.0], "l2"),
                 AttackSpec("cc", ClassConditionalLatentPGD(digits_class_vaes, steps=2), [0.5], "l2")]
        with pytest.raises(InputError, match="mixes budgets"):
            evaluate(digits_classifier, x, y, specs, progress=False)
