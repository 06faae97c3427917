"""Training objectives and presets: standard, Madry PGD, on-manifold (Stutz et al.), the Robust Manifold Defense."""

import json

import pytest
import torch
import torch.nn.functional as F

from manifold_defense import data
from manifold_defense.attacks import L2PGD, LinfPGD
from manifold_defense.classifiers import DefenseGANClassifier, DigitsCNN
from manifold_defense.training import (
    FastObjective,
    MadryObjective,
    TradesObjective,
    OnManifoldObjective,
    RobustManifoldObjective,
    StandardObjective,
    objective_preset,
    train_classifier,
)
from manifold_defense.validation import InputError


@pytest.fixture(scope="module")
def digits_train():
    return data.load("digits", "train")


def _train(objective, digits_train, digits_test, tmp_path, name, epochs=10, schedule="cosine"):
    torch.manual_seed(0)
    model = DigitsCNN()
    log = tmp_path / f"{name}.jsonl"
    train_classifier(model, digits_train.images, digits_train.labels, epochs=epochs, batch_size=64, lr=3e-3, seed=0,
                     objective=objective, path=tmp_path / f"{name}.pt", log_path=log, progress=False,
                     schedule=schedule)
    assert len(log.read_text().splitlines()) == epochs
    return model.eval()


class TestSmoke:
    @pytest.mark.parametrize("preset", ["standard", "pgd_at", "stutz", "rmd"])
    def test_smoke(self, preset, digits_vae, digits_test):
        torch.manual_seed(0)
        model = DigitsCNN()
        obj = objective_preset(preset, digits_vae, epsilon=1.0, eta=1.0)
        x, y = digits_test.images[:16], digits_test.labels[:16]
        loss, logits, metrics = obj(model, model, x, y)
        assert loss.dim() == 0 and torch.isfinite(loss) and logits.shape == (16, 10)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        assert model.training  # crafting ran in eval mode and restored the mode


    @pytest.mark.parametrize("preset", ["trades", "fast"])
    def test_linf_presets(self, preset, digits_classifier, digits_test):
        torch.manual_seed(0)
        model = DigitsCNN()
        obj = objective_preset(preset, epsilon=0.3, norm="linf", steps=5)
        x, y = digits_test.images[:16], digits_test.labels[:16]
        x_adv = obj.craft(digits_classifier, x) if preset == "trades" else obj.craft(digits_classifier, x, y)
        assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert float((x_adv - x).abs().max()) > 0.1  # it moved
        loss, logits, metrics = obj(model, model, x, y)
        assert loss.dim() == 0 and torch.isfinite(loss) and logits.shape == (16, 10)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        assert model.training

    @pytest.mark.parametrize("preset", ["pgd_at", "trades", "rmd", "combined"])
    def test_preset_step_size_reaches_the_adversary(self, preset, digits_vae, digits_class_vaes, digits_classifier,
                                                    digits_test):
        """``step_size`` is the image PGD step of every preset that has one: the examples are the ones an objective
        built with that step crafts, and differ from the default step's (2.5 ε / steps)."""
        gen = digits_class_vaes if preset == "combined" else digits_vae
        x, y = digits_test.images[:16], digits_test.labels[:16]

        def crafted(obj):
            inner = getattr(obj, "madry", obj)
            torch.manual_seed(0)
            return inner.craft(digits_classifier, x) if preset == "trades" else inner.craft(digits_classifier, x, y)

        kw = dict(epsilon=0.3, norm="linf", steps=3)
        obj = objective_preset(preset, gen, step_size=0.002, **kw)
        ref = (TradesObjective if preset == "trades" else MadryObjective)(step_size=0.002, **kw)
        assert obj.config().get("step_size", obj.config().get("off", {}).get("step_size")) == 0.002
        assert torch.equal(crafted(obj), crafted(ref))
        assert not torch.equal(crafted(obj), crafted(objective_preset(preset, gen, **kw)))

    def test_trades_inner_maximisation_raises_the_kl(self, digits_classifier, digits_test):
        """TRADES' adversary ascends KL(f(x) ‖ f(x')): after its steps the KL is far above the start's."""
        x = digits_test.images[:64]
        obj = TradesObjective(epsilon=0.3, steps=10)
        with torch.no_grad():
            lp = F.log_softmax(digits_classifier(x), 1)

            def kl(xa):
                return (lp.exp() * (lp - F.log_softmax(digits_classifier(xa), 1))).sum(1)

            torch.manual_seed(0)
            start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            torch.manual_seed(0)
            crafted = obj.craft(digits_classifier, x)
            assert float(kl(crafted).mean()) > 10 * float(kl(start).mean()) + 0.1

    @pytest.mark.parametrize("preset", ["stutz", "combined"])
    def test_class_conditional_presets(self, preset, digits_class_vaes, digits_test):
        torch.manual_seed(0)
        model = DigitsCNN()
        obj = objective_preset(preset, digits_class_vaes, epsilon=1.0, eta=0.5, steps=5)
        on = obj.on_manifold if preset == "combined" else obj
        assert on.conditional and on.config()["class_conditional"]
        x, y = digits_test.images[:16], digits_test.labels[:16]
        x_on = on.craft(model, x, y)
        # each on-manifold example is its own class model's image within η (latent ℓ∞) of the reference
        for c in y.unique().tolist():
            g, rows = digits_class_vaes.condition(c), y == c
            with torch.no_grad():
                z0 = g.encode(x[rows])
                z = g.encode(x_on[rows])  # the VAE encoder inverts its decoder only roughly: a loose check
                assert float((g(z) - x_on[rows]).pow(2).mean()) < float((g(z0) - x[rows]).pow(2).mean()) + 0.02
        loss, logits, metrics = obj(model, model, x, y)
        assert torch.isfinite(loss) and "on_manifold_loss" in metrics
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())


class TestRobustness:
    def test_adversarial_training_buys_robustness(self, digits_vae, digits_train, digits_test, tmp_path):
        x, y = digits_test.images[:240], digits_test.labels[:240]
        std = _train(StandardObjective(), digits_train, digits_test, tmp_path, "std")
        pgd = _train(MadryObjective(norm="l2", epsilon=1.0, steps=5), digits_train, digits_test, tmp_path, "pgd")
        onm = _train(OnManifoldObjective(digits_vae, eta=1.0, steps=10, weight=2.0), digits_train, digits_test,
                     tmp_path, "onm")
        acc = {name: L2PGD(steps=10)(m, x, y, epsilon=1.0).robust_accuracy for name, m in (("std", std), ("pgd", pgd))}
        assert acc["pgd"] > acc["std"] + 0.15, acc      # Madry training: pixel-space robustness (.04 -> .42 measured)
        # ℓ∞ 0.2: TRADES and FGSM with a random start (cyclic learning rate, Wong et al.'s) against standard training
        linf = {"std": std}
        linf["trades"] = _train(TradesObjective(epsilon=0.2, steps=5), digits_train, digits_test, tmp_path, "trades")
        linf["fast"] = _train(FastObjective(epsilon=0.2), digits_train, digits_test, tmp_path, "fast", schedule="cyclic")
        acc = {k: LinfPGD(steps=20)(m, x, y, epsilon=0.2).robust_accuracy for k, m in linf.items()}
        assert acc["trades"] > acc["std"] + 0.15 and acc["fast"] > acc["std"] + 0.15, acc
        # On-manifold training drives down the loss on its own on-manifold adversarial examples.
        log = [json.loads(line) for line in (tmp_path / "onm.jsonl").read_text().splitlines()]
        assert log[-1]["on_manifold_loss"] < 0.8 * log[0]["on_manifold_loss"], log  # 2.06 -> 1.45 measured
        with torch.no_grad():
            assert (onm(x).argmax(1) == y).float().mean() > 0.85  # and keeps its clean accuracy


class TestException:
    def test_exception(self, digits_vae):
        with pytest.raises(InputError, match="epsilon"):
            MadryObjective(epsilon=0.0)
        with pytest.raises(InputError, match="eta"):
            OnManifoldObjective(digits_vae, eta=-1.0)
        with pytest.raises(InputError, match="needs a generator"):
            objective_preset("rmd")
        with pytest.raises(InputError, match="needs a generator"):
            objective_preset("combined")
        with pytest.raises(InputError, match="unknown training preset"):
            objective_preset("madry")
        with pytest.raises(InputError, match="L-inf recipe|ℓ∞ recipe"):
            objective_preset("fast", norm="l2")
        with pytest.raises(InputError, match="beta"):
            TradesObjective(beta=-1.0)
        with pytest.raises(InputError, match="epsilon"):
            TradesObjective(epsilon=0.0)
        with pytest.raises(InputError, match="step_size"):
            FastObjective(step_size=-0.1)
        with pytest.raises(InputError, match="no second loss term"):
            objective_preset("stutz", digits_vae, weight=0.5)
        with pytest.raises(InputError, match="weight"):
            objective_preset("combined", digits_vae, weight=-1.0)
        obj = RobustManifoldObjective(digits_vae, eta=1.0)
        big = DefenseGANClassifier("A")
        with pytest.raises(InputError, match="shape mismatch"):
            obj(big, big, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))

    def test_class_conditional_misuse(self, digits_class_vaes):
        with pytest.raises(InputError, match="unconditional"):
            objective_preset("rmd", digits_class_vaes)
        with pytest.raises(InputError, match="condition"):
            RobustManifoldObjective(digits_class_vaes, eta=1.0)
        with pytest.raises(InputError, match="eta"):
            objective_preset("stutz", digits_class_vaes, eta=0.0)

    def test_default_eta_follows_the_generator_and_the_generator_is_in_the_config(self, digits_vae, digits_class_vaes):
        # Stutz et al.'s latent ℓ∞ 0.3 on a class-conditional generator (1.5 there would be a 5x larger box);
        # the generator's weights are part of the config a resumed training is checked against
        import copy

        assert objective_preset("stutz", digits_class_vaes).config()["eta"] == 0.3
        assert objective_preset("combined", digits_class_vaes).config()["on"]["eta"] == 0.3
        assert objective_preset("stutz", digits_vae).config()["eta"] == 1.5
        assert objective_preset("rmd", digits_vae).config()["eta"] == 1.5
        # the second term's weight: the published defaults unless given, and part of the config either way
        assert objective_preset("combined", digits_class_vaes).config()["weight"] == 0.5
        assert objective_preset("combined", digits_class_vaes, weight=1.0).config()["weight"] == 1.0
        assert objective_preset("rmd", digits_vae).config()["weight"] == 1e-2
        assert objective_preset("rmd", digits_vae, weight=0.1).config()["weight"] == 0.1
        other = copy.deepcopy(digits_vae)
        with torch.no_grad():
            next(other.parameters()).add_(0.01)
        for preset in ("stutz", "rmd"):
            assert objective_preset(preset, digits_vae).config() != objective_preset(preset, other).config()
