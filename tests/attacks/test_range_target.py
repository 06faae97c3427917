"""RangeTargetAttack: through the projection's own loss, it breaks a dead-zone defense that masks gradients."""

import pytest
import torch

from manifold_defense.attacks import BPDA, ImplicitPGD, RangeTargetAttack
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.validation import InputError


@pytest.fixture(scope="module")
def batch(digits_test):
    return digits_test.images[:32], digits_test.labels[:32]

class TestRangeTarget:
    @pytest.fixture(scope="class")
    def dead_zone(self, digits_classifier, digits_vae):
        # ILO's dead zone wider than the attack's ε: ℓ∞ perturbations leave the projection's loss flat
        cfg = ProjectionConfig.dead_zone_search(width=0.3, search_candidates=500, steps=40)
        return DefendedModel(digits_classifier, digits_vae, cfg).eval()

    def test_breaks_a_dead_zone_defense_that_gradient_attacks_cannot(self, dead_zone, batch):
        """The dead zone masks the projection's gradient (BPDA's identity and the implicit derivative point
        nowhere useful); going through the projection's own loss breaks it."""
        x, y = batch[0][:32], batch[1][:32]
        rt = RangeTargetAttack(restarts=4, steps=30)(dead_zone, x, y, epsilon=0.2)
        bpda = BPDA(steps=10)(dead_zone, x, y, epsilon=0.2)
        implicit = ImplicitPGD(steps=10, loss="margin")(dead_zone, x, y, epsilon=0.2)
        assert rt.robust_accuracy <= 0.2
        assert rt.robust_accuracy < min(bpda.robust_accuracy, implicit.robust_accuracy) - 0.2

    def test_reports_exactly_the_models_answer(self, dead_zone, batch):
        x, y = batch[0][:16], batch[1][:16]
        attack = RangeTargetAttack(restarts=2, steps=10)
        res = attack(dead_zone, x, y, epsilon=0.2)
        assert float((res.adversarial - x).abs().max()) <= 0.2 + 1e-6
        assert torch.equal(res.success, dead_zone(res.adversarial).argmax(1) != y)  # no success it did not see
        assert "dead_zone=0.3" in attack.surrogate_description

    def test_the_convergence_check_doubles_its_targets_and_steps(self):
        from manifold_defense.eval.sanity import scaled_attack

        doubled = scaled_attack(RangeTargetAttack(restarts=4, steps=10, rounds=3), 2)
        assert (doubled.restarts, doubled.steps, doubled.rounds) == (8, 20, 3)

    def test_exception(self, digits_classifier, batch):
        x, y = batch
        with pytest.raises(InputError, match="needs a generator"):
            RangeTargetAttack()(digits_classifier, x[:4], y[:4], epsilon=0.3)
        with pytest.raises(InputError, match="weight"):
            RangeTargetAttack(weight=1.0)
        with pytest.raises(InputError):
            RangeTargetAttack(restarts=0)
