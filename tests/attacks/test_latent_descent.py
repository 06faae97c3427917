"""Latent descent (Schott et al. 2019): the attack that walks towards another class's reconstruction."""

import pytest
import torch

from manifold_defense.attacks import LatentDescent
from manifold_defense.synthesis import AnalysisBySynthesis
from manifold_defense.validation import InputError


@pytest.fixture(scope="module")
def abs_digits(digits_class_vaes):
    return AnalysisBySynthesis(digits_class_vaes, candidates=500, steps=10).eval()


class TestSmoke:
    @pytest.mark.parametrize("norm, eps", [("l2", 2.5), ("linf", 0.4)])
    def test_breaks_analysis_by_synthesis_within_the_ball(self, abs_digits, digits_test, norm, eps):
        x, y = digits_test.images[:24], digits_test.labels[:24]
        with torch.no_grad():
            clean = float((abs_digits(x).argmax(1) == y).float().mean())
        res = LatentDescent(norm=norm, steps=20, step_size=0.2)(abs_digits, x, y, epsilon=eps)
        assert float(res.norms.max()) <= eps + 1e-5
        assert res.robust_accuracy < clean - 0.4, (res.robust_accuracy, clean)
        with torch.no_grad():  # success as the attack reports it is the model's own answer on what it returned
            assert torch.equal(res.success, abs_digits(res.adversarial).argmax(1) != y)

    def test_stronger_with_a_larger_ball(self, abs_digits, digits_test):
        x, y = digits_test.images[:24], digits_test.labels[:24]
        attack = LatentDescent(steps=20, step_size=0.2)
        small, large = attack(abs_digits, x, y, epsilon=0.5), attack(abs_digits, x, y, epsilon=2.5)
        assert small.success_rate < large.success_rate
        assert not bool((small.success & ~large.success).any())  # a walk that breaks inside 0.5 breaks inside 2.5


class TestException:
    def test_needs_reconstructions_and_sane_settings(self, digits_classifier, digits_test):
        x, y = digits_test.images[:4], digits_test.labels[:4]
        with pytest.raises(InputError, match="per-class reconstructions"):
            LatentDescent()(digits_classifier, x, y, epsilon=1.0)
        for kw in ({"norm": "l1"}, {"steps": 0}, {"step_size": 0.0}, {"step_size": 1.5}):
            with pytest.raises(InputError):
                LatentDescent(**kw)
