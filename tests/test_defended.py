"""The projection defense: ``DefendedModel`` and ``ProjectionConfig``."""

import os

import pytest
import torch

from manifold_defense.classifiers import DefenseGANClassifier, predict
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.validation import InputError

FAST = ProjectionConfig(steps=60, restarts=2)


@pytest.fixture(scope="module")
def defended(digits_classifier, digits_vae):
    return DefendedModel(digits_classifier, digits_vae, FAST).eval()


class TestSmoke:
    def test_smoke(self, defended, digits_test):
        x = digits_test.images[:8]
        logits = defended(x)
        assert logits.shape == (8, 10)
        res = defended.project(x)
        assert res.x.shape == x.shape and res.loss.shape == (8,)
        assert torch.equal(defended(x), logits)  # deterministic mode: same restarts, same answer

    def test_defended_accuracy_beats_chance(self, defended, digits_test):
        x, y = digits_test.images[:100], digits_test.labels[:100]
        acc = float((predict(defended, x) == y).float().mean())  # predict runs under inference_mode
        assert acc >= 0.8  # chance is 0.1; the undefended classifier scores ~0.98


class TestProjection:
    def test_projection_lowers_residual_below_encoder(self, defended, digits_vae, digits_test):
        x = digits_test.images[:32]
        with torch.no_grad():
            enc = (digits_vae(digits_vae.encode(x)) - x).pow(2).flatten(1).mean(1)
        res = defended.project(x)
        assert bool((res.loss <= enc + 1e-6).all()) and float(res.loss.mean()) < 0.9 * float(enc.mean())

    def test_stochastic_mode_draws_new_restarts(self, digits_classifier, digits_vae, digits_test):
        model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=5, restarts=2, init="random",
                                                                              stochastic=True))
        x = digits_test.images[:4]
        assert not torch.equal(model.project(x).z, model.project(x).z)

    def test_defense_gan_preset(self):
        cfg = ProjectionConfig.defense_gan()
        assert (cfg.steps, cfg.restarts, cfg.optimizer, cfg.momentum, cfg.lr, cfg.schedule) == (200, 10, "sgd", 0.7,
                                                                                               10.0, "step")
        assert cfg.init == "random" and cfg.tol == 0.0

    def test_fast_default_matches_defense_gan_residual_with_far_fewer_evaluations(self, digits_vae, digits_test):
        x = digits_test.images[:64]
        fast = ProjectionConfig().project(digits_vae, x)
        dgan = ProjectionConfig.defense_gan(latent_dim=digits_vae.latent_dim).project(digits_vae, x)
        assert float(fast.loss.mean()) <= 1.05 * float(dgan.loss.mean())
        assert fast.evals_per_sample * 10 <= dgan.evals_per_sample
        assert fast.info["search_evals_per_sample"] == ProjectionConfig().search_candidates / 64

    def test_for_generator_applies_tuned_settings(self, digits_vae, digits_classifier):
        assert ProjectionConfig.for_generator(digits_vae) == ProjectionConfig()
        digits_vae.metadata["projection"] = {"optimizer": "sgd", "lr": 10.0}
        try:
            cfg = ProjectionConfig.for_generator(digits_vae, lr=5.0)
            assert (cfg.optimizer, cfg.lr, cfg.steps) == ("sgd", 5.0, ProjectionConfig().steps)
            assert DefendedModel(digits_classifier, digits_vae).projection == ProjectionConfig.for_generator(digits_vae)
        finally:
            del digits_vae.metadata["projection"]

    def test_dead_zone_projection_ignores_bounded_noise(self, digits_vae, digits_classifier, digits_test):
        x = digits_test.images[:32]
        noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.15
        noisy = (x + noise).clamp(0, 1)
        mse = DefendedModel(digits_classifier, digits_vae, FAST).project(noisy)
        dz = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=60, restarts=2, dead_zone=0.15)).project(noisy)
        # Residuals within the dead zone are free: the dead-zone projection's own objective is far smaller.
        assert float(dz.loss.mean()) < 0.5 * float(mse.loss.mean())
        assert ProjectionConfig(dead_zone=0.3).csgm_kwargs(digits_vae)["loss"] is not None


class TestBatchInvariance:
    """A defense gives each input the same answer whatever else is in its batch (the docstring's promise)."""

    @pytest.mark.parametrize("preset", ["default", "defense_gan", "dead_zone"])
    def test_answer_does_not_depend_on_the_batch(self, preset, digits_classifier, digits_vae, digits_test):
        cfg = ProjectionConfig.preset(preset, digits_vae)
        if preset == "defense_gan":
            cfg = ProjectionConfig.defense_gan(latent_dim=digits_vae.latent_dim, steps=30, restarts=4)
        model = DefendedModel(digits_classifier, digits_vae, cfg).eval()
        x = digits_test.images[:20]
        with torch.no_grad():
            together = model(x)
            alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
            shuffled = model(x.flip(0)).flip(0)
            in_fives = torch.cat([model(c) for c in x.split(5)])
        assert torch.equal(together, alone) and torch.equal(together, shuffled) and torch.equal(together, in_fives)

    def test_without_padding_small_batches_round_differently(self, digits_vae, digits_test):
        """The reason for ``min_rows``: with it off, some projections change in the last bits (or more)."""
        x = digits_test.images[:20]
        cfg = ProjectionConfig(min_rows=1)
        together = cfg.project(digits_vae, x).z
        alone = torch.cat([cfg.project(digits_vae, x[i:i + 1]).z for i in range(len(x))])
        assert not torch.equal(together, alone)


class TestAttackLibraries:
    def test_pyautoattack_runs_on_defended_model(self, defended, digits_test):
        from pyautoattack import AutoAttack

        x, y = digits_test.images[:8], digits_test.labels[:8]
        aa = AutoAttack(defended, norm="Linf", eps=0.3, version="custom", attacks=["apgd-ce"], seed=0)
        aa.apgd.n_iter = 5
        adv, _ = aa.run_standard_evaluation(x, y, batch_size=8)
        assert float((adv - x).abs().max()) <= 0.3 + 1e-5
        # BPDA gradients let APGD through the projection: it breaks more than the clean errors.
        clean_wrong = int((predict(defended, x) != y).sum())
        assert int((predict(defended, adv) != y).sum()) > clean_wrong

    def test_torchattacks_runs_on_defended_model(self, defended, digits_test):
        torchattacks = pytest.importorskip("torchattacks")
        x, y = digits_test.images[:8], digits_test.labels[:8]
        adv = torchattacks.PGD(defended, eps=0.3, alpha=0.05, steps=5, random_start=False)(x, y)
        assert float((adv - x).abs().max()) <= 0.3 + 1e-5
        assert int((predict(defended, adv) != y).sum()) > int((predict(defended, x) != y).sum())


class TestGradcheck:
    def test_gradient_modes(self, digits_classifier, digits_vae, digits_test):
        x = digits_test.images[:4].clone().requires_grad_(True)
        bpda = DefendedModel(digits_classifier, digits_vae, FAST)
        logits, projected = bpda.classify(x)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, digits_test.labels[:4]), x)
        # Straight-through: the gradient is the classifier's gradient at the projected point.
        xp = projected.x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(torch.nn.functional.cross_entropy(digits_classifier(xp), digits_test.labels[:4]),
                                       xp)
        torch.testing.assert_close(g, g_ref)
        none = DefendedModel(digits_classifier, digits_vae, FAST, gradient="none")
        (g_none,) = torch.autograd.grad(none(x).sum(), x)
        assert float(g_none.abs().max()) == 0.0

    def test_foolbox_bpda_attack_succeeds_where_detached_gradients_fail(self, digits_classifier, digits_vae,
                                                                        digits_test):
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        import foolbox as fb

        x, y = digits_test.images[:24], digits_test.labels[:24]
        rates = {}
        for mode in ("bpda", "none"):
            model = DefendedModel(digits_classifier, digits_vae, FAST, gradient=mode).eval()
            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            _, _, success = fb.attacks.LinfPGD(steps=10, rel_stepsize=0.1, random_start=False)(fmodel, x, y,
                                                                                               epsilons=0.3)
            rates[mode] = float(success.float().mean())
        # With gradients through the projection (BPDA) the attack breaks many inputs; with detached
        # gradients (obfuscated) PGD has no direction and breaks only the already-misclassified ones.
        assert rates["bpda"] >= rates["none"] + 0.3

    def test_variant_shares_modules_and_unrolled_gradient_differs_from_bpda(self, defended, digits_test):
        x = digits_test.images[:8]
        unrolled = defended.variant(projection=ProjectionConfig(steps=10, restarts=2, tol=0.0), gradient="unrolled")
        assert unrolled.classifier is defended.classifier and unrolled.generator is defended.generator
        grads = {}
        for name, model in (("bpda", defended), ("unrolled", unrolled)):
            xg = x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(model(xg), digits_test.labels[:8]).backward()
            grads[name] = xg.grad
        assert grads["unrolled"].abs().sum() > 0
        # BPDA's gradient is the classifier's at G(ẑ); the true (unrolled) one also passes through ∂G(ẑ(x))/∂x.
        assert not torch.allclose(grads["unrolled"], grads["bpda"], atol=1e-6)


class TestException:
    def test_exception(self, digits_classifier, digits_vae):
        with pytest.raises(InputError, match="shape mismatch"):
            DefendedModel(DefenseGANClassifier("A"), digits_vae)
        model = DefendedModel(digits_classifier, digits_vae, FAST)
        with pytest.raises(InputError, match="outside the model's bounds"):
            model(torch.rand(2, 1, 8, 8) * 2)
        with pytest.raises(InputError, match="empty batch"):
            model(torch.rand(0, 1, 8, 8))
        with pytest.raises(InputError, match="gradient"):
            DefendedModel(digits_classifier, digits_vae, gradient="unrolled-ish")
        with pytest.raises(InputError, match="restarts"):
            ProjectionConfig(restarts=0)
        with pytest.raises(InputError, match="dead_zone"):
            ProjectionConfig(dead_zone=-0.1)
