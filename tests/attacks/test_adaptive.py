"""Adaptive attacks on the projection defense: BPDA, unrolled PGD, latent reparameterisation, margin loss."""

import pytest
import torch

from manifold_defense.attacks import BPDA, LatentReparameterization, LinfPGD, UnrolledPGD, margin_loss
from manifold_defense.classifiers import DigitsCNN
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.generators import VAE
from manifold_defense.validation import InputError

FAST = ProjectionConfig(steps=60, restarts=2)


@pytest.fixture(scope="module")
def defended(digits_classifier, digits_vae):
    return DefendedModel(digits_classifier, digits_vae, FAST).eval()


@pytest.fixture(scope="module")
def batch(digits_test):
    return digits_test.images[:48], digits_test.labels[:48]


def _residual(model, x):
    return float(model.project(x).loss.mean())


class TestSmoke:
    def test_bpda_breaks_defense_naive_gradients_cannot(self, defended, batch):
        x, y = batch
        clean = float((defended(x).argmax(1) == y).float().mean())
        bpda = BPDA(steps=10)(defended, x, y, epsilon=0.3)
        naive = LinfPGD(steps=10)(defended.variant(gradient="none"), x, y, epsilon=0.3)
        assert bpda.robust_accuracy < clean - 0.4
        assert bpda.robust_accuracy < naive.robust_accuracy - 0.3  # zero gradients make the defense look robust

    def test_unrolled_attack_breaks_defense(self, defended, batch):
        x, y = batch
        attack = UnrolledPGD(steps=10, unroll_steps=10)
        res = attack(defended, x, y, epsilon=0.3)
        clean = float((defended(x).argmax(1) == y).float().mean())
        assert res.robust_accuracy < clean - 0.4
        assert "unrolled gradient" in res.crafted_on and "steps=10" in res.crafted_on

    def test_latent_reparameterisation_lands_on_the_range(self, defended, batch):
        x, y = batch
        res = LatentReparameterization(steps=60, restarts=2)(defended, x, y, epsilon=2.0)
        assert float(res.norms.max()) <= 2.0 + 1e-5
        assert res.success_rate > 0.7
        # Its inputs lie (almost) on the generator's range; pixel-space PGD's inputs do not.
        pgd = BPDA(norm="l2", steps=10)(defended, x, y, epsilon=2.0)
        assert _residual(defended, res.adversarial) < 0.5 * _residual(defended, pgd.adversarial)

    def test_latent_reparameterisation_linf_respects_budget(self, defended, batch):
        x, y = batch
        res = LatentReparameterization(norm="linf", steps=40, restarts=2)(defended, x[:16], y[:16], epsilon=0.3)
        assert float((res.adversarial - x[:16]).abs().max()) <= 0.3 + 1e-6


class TestEOT:
    def test_bpda_eot_crafts_on_stochastic_surrogate(self, defended, batch):
        x, y = batch
        attack = BPDA(steps=5, eot=3, projection=ProjectionConfig(steps=20, restarts=2))
        res = attack(defended, x[:16], y[:16], epsilon=0.3)
        craft = attack.crafting_model(defended)
        assert craft.projection.stochastic and craft.projection.steps == 20 and craft.classifier is defended.classifier
        assert "surrogate" in res.crafted_on and "stochastic=True" in res.crafted_on
        assert res.success.float().mean() > 0.5  # scored on the real defended model


class TestSurrogateTransfer:
    def test_only_the_attacked_models_answer_counts(self, digits_classifier, digits_vae, batch):
        # a search run on a cheap projection alone, scored once on the costly one: the surrogate's verdicts
        # ("broken") must never become successes of the attacked model
        from manifold_defense.attacks import SurrogateTransfer

        x, y = batch
        costly = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=60, restarts=4)).eval()
        cheap = ProjectionConfig(steps=5, restarts=1, init="encoder", prune_after=0)
        res = SurrogateTransfer(BPDA(steps=10, projection=cheap))(costly, x, y, epsilon=0.3)
        with torch.no_grad():
            wrong = costly(res.adversarial).argmax(1) != y
        assert torch.equal(res.success, wrong) and 0 < int(res.success.sum())
        on_cheap = costly.variant(projection=cheap)
        with torch.no_grad():
            assert int((on_cheap(res.adversarial).argmax(1) != y).sum()) > int(res.success.sum())  # it transfers partly
        assert "transferred" in res.crafted_on
        with pytest.raises(InputError, match="surrogate"):
            SurrogateTransfer(BPDA(steps=10))


class TestMarginLoss:
    def test_margin_loss(self):
        logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
        m = margin_loss(logits, torch.tensor([0, 1]))
        assert torch.allclose(m, torch.tensor([2.0, -3.0]))
        assert torch.allclose(margin_loss(logits, torch.tensor([0, 1]), kappa=1.0), torch.tensor([2.0, -1.0]))


class TestGradcheck:
    @pytest.mark.parametrize("dtype", [torch.float64])
    def test_unrolled_defended_model(self, dtype):
        torch.manual_seed(0)
        gen = VAE((1, 4, 4), latent_dim=3, hidden=(8,)).to(dtype).eval()
        clf = DigitsCNN((1, 4, 4), num_classes=3, width=4).to(dtype).eval()
        model = DefendedModel(clf, gen, ProjectionConfig(steps=3, restarts=2, tol=0.0, lr=0.1), gradient="unrolled")
        x = torch.rand(2, 1, 4, 4, dtype=dtype).clamp(0.05, 0.95).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda v: model(v), (x,), eps=1e-6, atol=1e-5)

    def test_bpda_on_undefended_model_is_pgd(self, digits_classifier, batch):
        x, y = batch
        a = BPDA(steps=5, eot=1, seed=3)(digits_classifier, x, y, epsilon=0.2).adversarial
        b = LinfPGD(steps=5, seed=3)(digits_classifier, x, y, epsilon=0.2).adversarial
        assert torch.equal(a, b)


class TestException:
    def test_exception(self, digits_classifier, batch):
        x, y = batch
        with pytest.raises(InputError, match="norm"):
            BPDA(norm="l1")
        with pytest.raises(InputError, match="unroll_steps"):
            UnrolledPGD(unroll_steps=0)
        with pytest.raises(InputError, match="needs a generator"):
            LatentReparameterization()(digits_classifier, x[:4], y[:4], epsilon=1.0)
        with pytest.raises(InputError, match="epsilon"):
            BPDA()(digits_classifier, x[:4], y[:4], epsilon=-0.1)
        with pytest.raises(InputError):
            LatentReparameterization(slack=0.0)


class TestImplicit:
    def test_deterministic_projection_costs_one_draw(self, defended, batch, monkeypatch):
        """EOT over a deterministic projection repeats the same gradient: the implicit attack with eot=4 makes
        exactly the projections (and finds exactly the adversarial inputs) of eot=1."""
        from manifold_defense.attacks import ImplicitPGD

        x, y = batch[0][:8], batch[1][:8]
        calls = []
        project = ProjectionConfig.project
        monkeypatch.setattr(ProjectionConfig, "project", lambda self, *a, **k: calls.append(1) or project(self, *a, **k))
        runs = {}
        for eot in (1, 4):
            calls.clear()
            runs[eot] = (ImplicitPGD(steps=3, eot=eot)(defended, x, y, epsilon=0.3).adversarial, len(calls))
        assert runs[4][1] == runs[1][1]
        torch.testing.assert_close(runs[4][0], runs[1][0], rtol=0, atol=0)

    def test_a_model_not_known_to_be_deterministic_keeps_its_eot_draws(self, digits_classifier, batch):
        """A randomised model that is not a DefendedModel (here: Gaussian input noise) gets every EOT draw:
        collapsing them would weaken the attack on exactly the models that need EOT."""
        x, y = batch[0][:8], batch[1][:8]

        class NoisyInput(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net, self.images = net, 0

            def forward(self, v):
                self.images += len(v)
                return self.net(v + 1e-3 * torch.randn_like(v))  # random, too weak to flip a label

        seen = {}
        torch.manual_seed(0)
        for eot in (1, 4):
            model = NoisyInput(digits_classifier).eval()
            BPDA(norm="linf", steps=3, eot=eot)(model, x, y, epsilon=1e-3)  # too small to break any: all run
            seen[eot] = model.images
        assert seen[4] >= seen[1] + 3 * 3 * len(x)  # 3 more draws of every sample at each of the 3 steps



class TestWarmStart:
    """Crafting on projections warm-started at the previous step's ẑ (``warm_steps``): cheaper, never a verdict."""

    def test_warm_logits_never_count_as_a_success(self, defended, batch, monkeypatch):
        """Warm logits that call every input misclassified must not break anything the model itself gets right:
        they only pick the rows the model is asked about (fails if a warm step's logits are taken as exact)."""
        from manifold_defense.attacks import ImplicitPGD

        x, y = batch
        right = defended(x).argmax(1) == y
        x, y = x[right][:12], y[right][:12]
        classify_from = DefendedModel.classify_from

        def fooled(self, images, z_start, *, steps):
            logits, res = classify_from(self, images, z_start, steps=steps)
            wrong = (y.repeat(len(images) // len(y) + 1)[: len(images)] + 1) % logits.shape[1]
            return logits + 100.0 * torch.nn.functional.one_hot(wrong, logits.shape[1]), res

        monkeypatch.setattr(DefendedModel, "classify_from", fooled)
        for attack in (BPDA(steps=8, check_every=4, warm_steps=3), ImplicitPGD(steps=8, check_every=4, warm_steps=3)):
            result = attack(defended, x, y, epsilon=1e-4)  # far too small to break a correctly classified digit
            assert not bool(result.success.any())

    def test_warm_crafting_is_cheaper_and_as_strong(self, defended, batch):
        """On the digits, implicit PGD crafting on 3-step warm projections (the model itself every 4th step)
        breaks about as many samples as cold crafting, for fewer generator rows."""
        from manifold_defense.attacks import ImplicitPGD

        x, y = batch
        rows, results = {}, {}
        forward = defended.generator.forward
        for warm in (0, 3):
            seen = [0]

            def counting(z, seen=seen):
                seen[0] += len(z)
                return forward(z)

            defended.generator.forward = counting
            try:
                attack = ImplicitPGD(steps=12, check_every=4 if warm else 1, warm_steps=warm, loss="margin")
                results[warm] = attack(defended, x, y, epsilon=0.3).robust_accuracy
            finally:
                del defended.generator.forward
            rows[warm] = seen[0]
        assert rows[3] < 0.7 * rows[0]
        assert results[3] <= results[0] + 2 / len(x)

    def test_refine_tracks_the_projection(self, defended, batch):
        """From ``ẑ(x)`` a few warm steps stay at (or below) the cold projection's residual."""
        x = batch[0][:16]
        cold = defended.project(x)
        warm = defended.projection.refine(defended.generator, x, cold.z, steps=3)
        assert bool((warm.loss <= cold.loss * 1.05 + 1e-6).all())

    def test_exception(self, defended, batch):
        x = batch[0][:4]
        z = defended.project(x).z
        with pytest.raises(InputError, match="steps"):
            defended.projection.refine(defended.generator, x, z, steps=0)
        with pytest.raises(InputError, match="stochastic"):
            ProjectionConfig(stochastic=True).refine(defended.generator, x, z, steps=2)
        with pytest.raises(InputError, match="warm_steps"):
            BPDA(warm_steps=-1)
        with pytest.raises(InputError, match="unrolled"):
            defended.variant(gradient="unrolled").classify_from(x, z, steps=2)

    def test_escalation_keeps_the_cold_cadence(self):
        """Escalating a warm attack doubles its steps, not the gap between its cold (scored) projections."""
        from manifold_defense.eval.suites import escalated_attack

        attack = BPDA(steps=10, check_every=4, warm_steps=3)
        out = escalated_attack(attack, 4, 1)
        assert (out.pgd.steps, out.pgd.check_every, out.pgd.warm_steps) == (40, 4, 3)
