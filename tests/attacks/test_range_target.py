"""RangeTargetAttack: through the projection's own loss, it breaks a dead-zone defense that masks gradients."""

import pytest
import torch

from manifold_defense.attacks import BPDA, ImplicitPGD, RangeTargetAttack, RangeTargetPGD
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.validation import InputError


@pytest.fixture(scope="module")
def batch(digits_test):
    return digits_test.images[:32], digits_test.labels[:32]


@pytest.fixture(scope="module")
def dead_zone(digits_classifier, digits_vae):
    # ILO's dead zone wider than the attack's ε: ℓ∞ perturbations leave the projection's loss flat
    cfg = ProjectionConfig.dead_zone_search(width=0.3, search_candidates=500, steps=40)
    return DefendedModel(digits_classifier, digits_vae, cfg).eval()


class TestRangeTarget:
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
        assert "dead_zone=0.3" in res.crafted_on

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


class TestRangeTargetPGD:
    def test_keeps_what_the_range_targets_broke_and_pgd_breaks_more(self, dead_zone, digits_vae, batch):
        """Every sample the range targets broke stays broken (same targets, same seed), and PGD from their
        closest calls (gradient of the smooth projection, success on the dead-zone model) breaks others."""
        x, y = batch
        smooth = ProjectionConfig.for_generator(digits_vae)
        rt = RangeTargetAttack(restarts=2, steps=10, rounds=1)(dead_zone, x, y, epsilon=0.15)
        attack = RangeTargetPGD(targets=2, latent_steps=10, rounds=1, steps=10, restarts=1, range_restarts=1,
                                target_starts=2, projection=smooth)
        both = attack(dead_zone, x, y, epsilon=0.15)
        assert bool((both.success | ~rt.success).all())  # nothing the first part broke is lost
        assert int(both.success.sum()) > int(rt.success.sum())
        assert float((both.adversarial - x).abs().max()) <= 0.15 + 1e-6
        assert torch.equal(both.success, dead_zone(both.adversarial).argmax(1) != y)  # the model's own answers
        assert "then implicit PGD from 2 of their inputs on a surrogate projection" in both.crafted_on

    def test_the_convergence_check_doubles_both_parts(self):
        from manifold_defense.eval.sanity import scaled_attack

        d = scaled_attack(RangeTargetPGD(targets=4, latent_steps=10, steps=20, restarts=1, range_restarts=3,
                                         target_starts=2), 2)
        assert (d.range_target.restarts, d.range_target.steps, d.range_target.rounds) == (8, 20, 3)
        assert (d.pgd.pgd.steps, d.pgd.pgd.restarts, d.pgd.range_restarts, d.target_starts) == (40, 2, 6, 4)

    def test_exception(self, digits_classifier, batch):
        x, y = batch
        with pytest.raises(InputError, match="target_starts"):
            RangeTargetPGD(target_starts=-1)
        with pytest.raises(InputError, match="needs a generator"):
            RangeTargetPGD()(digits_classifier, x[:4], y[:4], epsilon=0.3)
