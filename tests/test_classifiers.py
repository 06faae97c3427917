"""Classifiers: the Defense-GAN MNIST models A-D and the digits CNN."""

import pytest
import torch

from manifold_defense import data
from manifold_defense.classifiers import DefenseGANClassifier, DigitsCNN, MadryMNISTClassifier, accuracy, predict
from manifold_defense.training import train_classifier
from manifold_defense.validation import InputError


class TestSmoke:
    @pytest.mark.parametrize("model", ["A", "B", "C", "D"])
    def test_defensegan(self, model, device, dtype):
        clf = DefenseGANClassifier(model).to(device=device, dtype=dtype)
        out = clf(torch.rand(3, 1, 28, 28, device=device, dtype=dtype))
        assert out.shape == (3, 10) and out.dtype == dtype

    def test_madry(self, device, dtype):
        clf = MadryMNISTClassifier().to(device=device, dtype=dtype)
        assert clf(torch.rand(3, 1, 28, 28, device=device, dtype=dtype)).shape == (3, 10)
        assert sum(p.numel() for p in clf.parameters()) == 3_274_634  # Madry et al.'s MNIST network
        from manifold_defense.models import build_model

        again = build_model("madry-mnist", clf.config)  # rebuilt from its checkpoint's architecture and config
        assert isinstance(again, MadryMNISTClassifier) and again.config == clf.config

    def test_digits(self, device):
        assert DigitsCNN().to(device)(torch.rand(2, 1, 8, 8, device=device)).shape == (2, 10)


class TestAccuracy:
    def test_digits_zoo_classifier_accuracy(self, digits_classifier, digits_test):
        acc = accuracy(digits_classifier, *digits_test)
        assert acc >= 0.95  # chance is 0.10; the zoo recipe reaches ~0.98

    @pytest.mark.mnist
    def test_mnist_classifier_a_learns(self):
        train = data.load("mnist", "train", limit=6000)
        test = data.load("mnist", "test", limit=2000)
        torch.manual_seed(0)
        clf = DefenseGANClassifier("A")
        hist = train_classifier(clf, *train, epochs=2, test=tuple(test), progress=False)
        assert hist[-1]["test_acc"] >= 0.93  # two epochs on a tenth of MNIST; chance is 0.10


class TestTraining:
    def test_training_is_seeded(self):
        x, y = data.load("digits", "train", limit=200)
        a, b = DigitsCNN(width=4), DigitsCNN(width=4)
        b.load_state_dict(a.state_dict())
        train_classifier(a, x, y, epochs=2, seed=3, progress=False)
        train_classifier(b, x, y, epochs=2, seed=3, progress=False)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)

    def test_random_shift_is_a_translation(self, rng):
        from manifold_defense.training import random_shift

        x = torch.rand(64, 2, 6, 6)
        out = random_shift(x, 1, rng)
        assert out.shape == x.shape
        assert torch.equal(random_shift(x, 0, rng), x)
        # Every output is the input translated by some (dy, dx) in {-1, 0, 1}², zero-filled.
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        crops = torch.stack([padded[..., dy:dy + 6, dx:dx + 6] for dy in range(3) for dx in range(3)], 1)
        match = (crops == out[:, None]).flatten(2).all(2)
        assert bool(match.any(1).all())
        assert len({int(m.nonzero()[0]) for m in match}) > 3  # offsets differ across the batch


class TestGradcheck:
    def test_gradcheck(self):
        torch.manual_seed(0)
        clf = DigitsCNN(width=2).double().eval()
        x = torch.rand(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(clf, (x,))


class TestException:
    def test_exception(self):
        with pytest.raises(InputError, match="channel count"):
            DefenseGANClassifier("A")(torch.rand(2, 3, 28, 28))
        with pytest.raises(InputError, match="image shape"):
            DigitsCNN()(torch.rand(2, 1, 28, 28))
        with pytest.raises(ValueError, match="one of A, B, C, D"):
            DefenseGANClassifier("E")
        with pytest.raises(ValueError, match="too small"):
            MadryMNISTClassifier((1, 3, 3))
        clf = DigitsCNN()
        with pytest.raises(InputError, match="outside"):
            accuracy(clf, torch.rand(2, 1, 8, 8) * 16, torch.tensor([0, 1]))
        with pytest.raises(InputError, match=r"shape \(2,\)"):
            accuracy(clf, torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]))
        with pytest.raises(InputError, match="NaN"):
            train_classifier(clf, torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long), epochs=1)
        assert predict(clf, torch.rand(0, 1, 8, 8)).shape == (0,)
