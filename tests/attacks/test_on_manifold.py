"""On-manifold attacks: latent PGD and the overpowered attack (pairs on the generator's range)."""

import pytest
import torch

from manifold_defense.attacks import LatentPGD, OverpoweredAttack
from manifold_defense.classifiers import DefenseGANClassifier
from manifold_defense.defended import ProjectionConfig
from manifold_defense.inversion import csgm
from manifold_defense.validation import InputError

PROJ = ProjectionConfig(steps=60, restarts=2)


class TestSmoke:
    def test_latent_pgd_stays_on_manifold_and_breaks_classifier(self, digits_classifier, digits_vae, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        eta = 1.5
        res = LatentPGD(digits_vae, steps=20, latent_stepsize=0.25, projection=PROJ)(digits_classifier, x, y,
                                                                                     epsilon=eta)
        assert bool((res.norms <= eta + 1e-5).all())  # measured from G(ẑ(x)), not from x
        with torch.no_grad():
            z = digits_vae.encode(res.adversarial)  # the adversarial images lie on the range: G re-encodes them well
            on_range = (digits_vae(z) - res.adversarial).pow(2).mean()
            off_range = (digits_vae(digits_vae.encode(x)) - x).pow(2).mean()
        assert float(on_range) < float(off_range)
        assert res.success_rate >= 0.5

    def test_overpowered_pair_within_eta_breaks_classifier(self, digits_classifier, digits_vae, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        attack = OverpoweredAttack(digits_vae, steps=40, rounds=2)
        res = attack(digits_classifier, x, y, epsilon=1.0)  # the base class asserts ‖G(z2) − G(z1)‖₂ ≤ η
        assert res.success_rate > 0.5
        found = attack.run(digits_classifier, x, y, 1.0)
        adv, ref = found.adversarial, found.reference
        assert float((adv - ref).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
        # Both ends are on the generator's range: re-projecting them changes (almost) nothing.
        back = csgm(digits_vae, adv, steps=100, restarts=2, init="encoder", lr=0.05)
        assert float(back.loss.mean()) < 0.01


class TestStrength:
    def test_larger_budget_breaks_more(self, digits_classifier, digits_vae, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        attack = LatentPGD(digits_vae, steps=15, latent_stepsize=0.25, projection=PROJ)
        rates = [attack(digits_classifier, x, y, epsilon=e).success_rate for e in (0.0, 0.5, 2.5)]
        assert rates[0] <= rates[1] <= rates[2] and rates[2] > rates[0] + 0.3

    def test_larger_eta_breaks_more_overpowered(self, digits_classifier, digits_vae, digits_test):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        attack = OverpoweredAttack(digits_vae, steps=30, rounds=2)
        small = attack(digits_classifier, x, y, epsilon=0.25).success_rate
        large = attack(digits_classifier, x, y, epsilon=1.5).success_rate
        assert large >= small and large > 0.5


class TestException:
    def test_exception(self, digits_vae, digits_test):
        with pytest.raises(InputError, match="steps"):
            LatentPGD(digits_vae, steps=0)
        with pytest.raises(InputError):
            LatentPGD(digits_vae, steps=2)(DefenseGANClassifier("A"), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]),
                                           epsilon=1.0)
        with pytest.raises(InputError, match="shape mismatch"):
            OverpoweredAttack(digits_vae, steps=2)(DefenseGANClassifier("A"), torch.rand(2, 1, 28, 28),
                                                   torch.tensor([0, 1]), epsilon=1.0)
        with pytest.raises(InputError, match="multiplier"):
            OverpoweredAttack(digits_vae, multiplier=0.0)
