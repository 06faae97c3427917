"""Pixel-space attacks: FGSM and L∞/L2 PGD (restarts, EOT)."""

import pytest

from manifold_defense.attacks import FGSM, L2PGD, LinfPGD, ProjectedGradientDescent
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.validation import InputError

ATTACKS = {
    "fgsm": lambda: FGSM(),
    "linf-pgd": lambda: LinfPGD(steps=10, restarts=2),
    "l2-pgd": lambda: L2PGD(steps=10, rel_stepsize=0.25, restarts=2),
}
EPS = {"fgsm": 0.3, "linf-pgd": 0.3, "l2-pgd": 2.0}


class TestSmoke:
    @pytest.mark.parametrize("name", list(ATTACKS))
    def test_attack_breaks_undefended_classifier(self, name, digits_classifier, digits_test):
        x, y = digits_test.images[:64], digits_test.labels[:64]
        res = ATTACKS[name]()(digits_classifier, x, y, epsilon=EPS[name])
        assert res.adversarial.shape == x.shape
        assert bool((res.norms <= EPS[name] + 1e-5).all())
        assert res.success_rate >= 0.6  # clean error is ~2 %; these budgets break most 8x8 digits


class TestStrength:
    def test_iterative_at_least_as_strong_as_single_step(self, digits_classifier, digits_test):
        x, y = digits_test.images[:64], digits_test.labels[:64]
        fgsm = FGSM()(digits_classifier, x, y, epsilon=0.1)
        pgd = LinfPGD(steps=20, random_start=False)(digits_classifier, x, y, epsilon=0.1)
        assert pgd.success_rate >= fgsm.success_rate

    def test_success_grows_with_epsilon(self, digits_classifier, digits_test):
        x, y = digits_test.images[:64], digits_test.labels[:64]
        rates = [LinfPGD(steps=10)(digits_classifier, x, y, epsilon=e).success_rate for e in (0.0, 0.05, 0.15, 0.5)]
        assert rates == sorted(rates) and rates[-1] >= 0.95 and rates[0] <= 0.05


class TestEOT:
    def test_bpda_eot_against_stochastic_projection(self, digits_classifier, digits_vae, digits_test):
        x, y = digits_test.images[:16], digits_test.labels[:16]
        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=30, restarts=2, stochastic=True))
        res = LinfPGD(steps=8, eot=2, rel_stepsize=0.15)(model, x, y, epsilon=0.3)
        assert res.success_rate >= 0.5


class TestException:
    def test_exception(self, digits_classifier, digits_test):
        x, y = digits_test.images[:4], digits_test.labels[:4]
        with pytest.raises(InputError, match="epsilon"):
            FGSM()(digits_classifier, x, y, epsilon=-0.1)
        with pytest.raises(InputError, match=r"shape \(4,\)"):
            FGSM()(digits_classifier, x, y[:3], epsilon=0.1)
        with pytest.raises(InputError, match="outside"):
            FGSM()(digits_classifier, x * 3, y, epsilon=0.1)
        with pytest.raises(InputError, match="norm"):
            ProjectedGradientDescent(norm="l1")
        with pytest.raises(InputError, match="steps"):
            LinfPGD(steps=0)
