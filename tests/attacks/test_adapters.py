"""Adapters to external attacks: Carlini-Wagner, AutoAttack, HopSkipJump."""

import pytest

from manifold_defense.attacks import AutoAttack, CarliniWagnerL2, HopSkipJump
from manifold_defense.validation import InputError


class TestSmoke:
    def test_carlini_wagner_breaks_undefended(self, digits_classifier, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        res = CarliniWagnerL2(binary_search_steps=4, steps=50, stepsize=0.05, initial_const=0.1)(
            digits_classifier, x, y, epsilon=2.0)
        assert bool((res.norms <= 2.0 + 1e-5).all())
        assert res.success_rate >= 0.8

    @pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.5)])
    def test_autoattack_breaks_undefended(self, norm, eps, digits_classifier, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        res = AutoAttack(norm=norm, version="custom", attacks=["apgd-ce"], n_iter=20)(digits_classifier, x, y,
                                                                                   epsilon=eps)
        assert bool((res.norms <= eps + 1e-5).all())
        assert res.success_rate >= 0.7

    @pytest.mark.parametrize("norm, eps", [("l2", 3.0), ("linf", 0.3)])
    def test_hopskipjump_breaks_undefended_with_labels_only(self, norm, eps, digits_classifier, digits_test):
        x, y = digits_test.images[:16], digits_test.labels[:16]
        res = HopSkipJump(norm=norm)(digits_classifier, x, y, epsilon=eps)
        assert bool((res.norms <= eps + 1e-5).all())
        assert res.success_rate >= 0.5

    def test_hopskipjump_is_reproducible_and_leaves_the_global_generator_alone(self, digits_classifier, digits_test):
        import torch

        x, y = digits_test.images[:8], digits_test.labels[:8]
        torch.manual_seed(123)
        before = torch.rand(1)
        torch.manual_seed(123)
        runs = [HopSkipJump(norm="l2", steps=2)(digits_classifier, x, y, epsilon=1.0).norms for _ in range(2)]
        assert torch.equal(runs[0], runs[1])
        assert torch.equal(torch.rand(1), before)  # the caller's random stream is untouched


    def test_batched_l2_estimate_finds_smaller_perturbations_than_foolbox(self, digits_classifier, digits_test):
        # the batched ℓ2 estimate normalises each probe and the estimate per sample (Chen et al. 2020); foolbox
        # normalises both over the batch (with foolbox's normalisation the batched attack returns foolbox's result
        # exactly: checked), so on the same budget the batched attack must end closer to the inputs
        import foolbox as fb
        import torch

        from manifold_defense.attacks.adapters import _batched_hop_skip_jump, foolbox_model

        x, y = digits_test.images[:16], digits_test.labels[:16]
        kw = {"steps": 4, "initial_gradient_eval_steps": 20, "max_gradient_eval_steps": 100, "constraint": "l2"}
        found = {}
        for name, attack in (("foolbox", fb.attacks.HopSkipJumpAttack(**kw)),
                             ("batched", _batched_hop_skip_jump()(digits_classifier, y, **kw))):
            torch.manual_seed(0)
            raw, _, _ = attack(foolbox_model(digits_classifier), x, y, epsilons=None)
            found[name] = (raw - x).flatten(1).norm(dim=1)
        assert float(found["batched"].median()) < float(found["foolbox"].median()), found


class TestEOT:
    def test_autoattack_rand_on_defended_uses_stochastic_surrogate(self, digits_classifier, digits_vae, digits_test):
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=40, restarts=2)).eval()
        x, y = digits_test.images[:16], digits_test.labels[:16]
        attack = AutoAttack(version="rand", n_iter=10, eot_iter=2, stochastic=True)
        res = attack(model, x, y, epsilon=0.3)
        assert "stochastic=True" in res.crafted_on
        assert res.success_rate >= 0.5


    def test_apgd_follows_the_implicit_gradient_once_per_step(self, digits_classifier, digits_vae, digits_test,
                                                              monkeypatch):
        import manifold_defense.defended as defended
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        calls = []
        real = defended.implicit_projection
        monkeypatch.setattr(defended, "implicit_projection", lambda *a, **k: calls.append(1) or real(*a, **k))
        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=40, restarts=2)).eval()
        x, y = digits_test.images[:16], digits_test.labels[:16]
        res = AutoAttack(version="custom", attacks=["apgd-ce"], n_iter=10, eot_iter=4, gradient="implicit")(
            model, x, y, epsilon=0.3)
        assert "(implicit gradient)" in res.crafted_on and "stochastic=False" in res.crafted_on
        assert 0 < len(calls) <= 11  # the deterministic projection's gradient, not 4 EOT draws of it per step
        assert res.success_rate >= 0.5


class TestException:
    def test_exception(self):
        with pytest.raises(InputError, match="attacks"):
            AutoAttack(version="custom")
        with pytest.raises(InputError, match="version"):
            AutoAttack(version="lite")
        with pytest.raises(InputError, match="gradient"):
            AutoAttack(gradient="unrolled")
        with pytest.raises(InputError, match="steps"):
            CarliniWagnerL2(steps=0)
        with pytest.raises(InputError, match="norm"):
            HopSkipJump(norm="l1")
        with pytest.raises(InputError, match="gradient_eval_steps"):
            HopSkipJump(initial_gradient_eval_steps=50, max_gradient_eval_steps=10)
