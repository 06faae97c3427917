"""Label-preserving on-manifold attacks on class-conditional generators (Stutz et al. 2019)."""

import pytest
import torch

from manifold_defense.attacks import ClassConditionalLatentPGD, ClassConditionalOverpowered, LatentPGD
from manifold_defense.attacks.class_conditional import REFERENCE_PROJECTION
from manifold_defense.eval import build_attack
from manifold_defense.validation import InputError


class TestSmoke:
    def test_latent_budget_and_class_range(self, digits_classifier, digits_class_vaes, digits_test):
        x, y = digits_test.images[:40], digits_test.labels[:40]
        attack = ClassConditionalLatentPGD(digits_class_vaes, steps=20)
        found = attack.run(digits_classifier, x, y, 1.0)
        adv, ref, norms = found.adversarial, found.reference, found.norms
        assert float(norms.max()) <= 1.0 + 1e-6  # the latent ℓ∞ ball
        res = attack(digits_classifier, x, y, epsilon=1.0)
        assert res.norm == "latent_linf" and bool((res.norms <= 1.0 + 1e-6).all())
        # every adversarial image is its own class model's decoding of a latent within η of the reference's code
        for c in y.unique().tolist():
            g, rows = digits_class_vaes.condition(c), y == c
            z0 = REFERENCE_PROJECTION.project(g, x[rows]).z
            with torch.no_grad():
                assert torch.allclose(ref[rows], g(z0), atol=1e-5)

    def test_same_as_one_attack_per_class(self, digits_classifier, digits_class_vaes, digits_test):
        x, y = digits_test.images[:24], digits_test.labels[:24]
        found = ClassConditionalLatentPGD(digits_class_vaes, steps=10).run(digits_classifier, x, y, 1.5)
        adv, ref = found.adversarial, found.reference
        c = int(y[0])
        rows = y == c
        single = LatentPGD(digits_class_vaes.condition(c), steps=10, budget="latent_linf",
                           projection=REFERENCE_PROJECTION).run(digits_classifier, x[rows], y[rows], 1.5)
        assert torch.allclose(adv[rows], single.adversarial, atol=1e-6)
        assert torch.allclose(ref[rows], single.reference, atol=1e-6)

    def test_the_search_verdict_travels_with_the_rows(self, digits_classifier, digits_class_vaes, digits_test):
        # each class's search verdict lands on its own rows of the batch (Attack.__call__ ORs it into success
        # on a deterministic model, so a success is not lost when the batch is re-scored in another shape)
        x, y = digits_test.images[:40], digits_test.labels[:40]
        attack = ClassConditionalLatentPGD(digits_class_vaes, steps=20)
        found = attack.run(digits_classifier, x, y, 4.0)
        adv, reached = found.adversarial, found.reached
        assert reached.shape == (40,) and bool(reached.any())
        with torch.no_grad():
            wrong = digits_classifier(adv).argmax(1) != y
        assert bool((wrong == reached).all())

    def test_a_defended_model_is_differentiated_through_its_projection(self, digits_classifier, digits_vae,
                                                                      digits_class_vaes):
        # a class model's G(z, c) is not on an unconditional defense's range: its projection moves it, so the
        # search must differentiate the defended model, not its bare classifier (the same generator: bare)
        from manifold_defense.attacks.on_manifold import _differentiable_classifier
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        defended = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=5))
        assert _differentiable_classifier(defended, digits_class_vaes.condition(3)) is defended
        assert _differentiable_classifier(defended, digits_vae) is digits_classifier

    def test_overpowered_in_class_range(self, digits_classifier, digits_class_vaes, digits_test):
        x, y = digits_test.images[:24], digits_test.labels[:24]
        res = ClassConditionalOverpowered(digits_class_vaes, steps=30, rounds=2)(digits_classifier, x, y, epsilon=1.5)
        assert bool((res.norms <= 1.5 + 1e-4).all()) and res.success_rate > 0


class TestStrength:
    def test_tiny_budget_changes_little_and_larger_breaks_more(self, digits_classifier, digits_class_vaes,
                                                                 digits_test):
        x, y = digits_test.images[:40], digits_test.labels[:40]
        attack = ClassConditionalLatentPGD(digits_class_vaes, steps=20)
        found = attack.run(digits_classifier, x, y, 1e-4)
        adv, ref, norms = found.adversarial, found.reference, found.norms
        assert float(norms.max()) <= 1e-4 + 1e-7 and float((adv - ref.clamp(0, 1)).abs().max()) < 1e-2
        rates = [attack(digits_classifier, x, y, epsilon=e).success_rate for e in (1e-4, 1.0, 4.0)]
        assert rates[0] <= rates[1] <= rates[2] and rates[2] >= rates[0] + 0.2

    def test_breaks_a_classifier_that_ignores_some_pixels(self, digits_class_vaes, digits_test):
        # A linear classifier fitted to the class means is fooled on the class ranges by a large latent budget.
        x, y = digits_test.images[:60], digits_test.labels[:60]
        means = torch.stack([x[y == c].mean(0).flatten() for c in range(10)])

        class Nearest(torch.nn.Module):
            input_shape, num_classes = (1, 8, 8), 10

            def forward(self, v):
                return -torch.cdist(v.flatten(1), means)

        res = ClassConditionalLatentPGD(digits_class_vaes, steps=40)(Nearest(), x, y, epsilon=3.0)
        assert res.success_rate > 0.3


class TestException:
    def test_unconditional_generator_refused(self, digits_vae):
        with pytest.raises(InputError, match="not class-conditional"):
            ClassConditionalLatentPGD(digits_vae)
        with pytest.raises(InputError, match="not class-conditional"):
            build_attack("on_manifold_cc", generator=digits_vae)

    def test_budget_not_positive(self, digits_classifier, digits_class_vaes, digits_test):
        x, y = digits_test.images[:2], digits_test.labels[:2]
        for eta in (0.0, -0.3):
            with pytest.raises(InputError, match="η|epsilon"):
                ClassConditionalLatentPGD(digits_class_vaes, steps=2)(digits_classifier, x, y, epsilon=eta)

    def test_bad_options(self, digits_class_vaes):
        with pytest.raises(InputError, match="budget"):
            ClassConditionalLatentPGD(digits_class_vaes, budget="latent_l7")
        with pytest.raises(InputError, match="steps"):
            ClassConditionalLatentPGD(digits_class_vaes, steps=0)

    def test_label_outside_classes(self, digits_classifier, digits_class_vaes, digits_test):
        x = digits_test.images[:2]
        with pytest.raises(InputError):
            ClassConditionalLatentPGD(digits_class_vaes, steps=2)(digits_classifier, x, torch.tensor([0, 11]),
                                                                  epsilon=0.3)
