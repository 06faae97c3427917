"""Input validation: images, labels, latents and model compatibility."""

import pytest
import torch

from manifold_defense.classifiers import DefenseGANClassifier, DigitsCNN
from manifold_defense.generators import VAE, DefenseGANGenerator
from manifold_defense.validation import InputError, check_compatible, check_images, check_labels, check_latents


class TestSmoke:
    def test_smoke(self):
        x = torch.rand(3, 1, 8, 8)
        assert check_images(x, (1, 8, 8)) is x
        assert check_labels(torch.tensor([0, 9, 3]), 3, 10) is not None
        assert check_latents(torch.zeros(2, 5), 5) is not None

    def test_compatible(self):
        check_compatible(VAE((1, 28, 28), 4, [16]), DefenseGANClassifier("A"))
        check_compatible(DefenseGANGenerator(dim=4), DefenseGANClassifier("D"))


class TestException:
    @pytest.mark.parametrize(
        "x, match",
        [
            (torch.rand(1, 8, 8), "4-D batch"),
            (torch.rand(2, 3, 8, 8), "channel count"),
            (torch.rand(2, 1, 28, 28), "image shape"),
            (torch.rand(2, 1, 8, 8) * 255, "outside the model's bounds.*0-255"),
            (torch.rand(2, 1, 8, 8) - 0.5, "outside the model's bounds"),
            (torch.full((2, 1, 8, 8), float("nan")), "NaN or inf"),
            (torch.tensor([0.0, float("inf")]).repeat(32).reshape(2, 1, 8, 4).repeat(1, 1, 1, 2), "NaN or inf"),
            (torch.rand(0, 1, 8, 8), "empty batch"),
            (torch.randint(0, 2, (2, 1, 8, 8)), "floating-point"),
        ],
    )
    def test_images(self, x, match):
        with pytest.raises(InputError, match=match):
            check_images(x, (1, 8, 8))

    def test_not_tensor(self):
        with pytest.raises(InputError, match="torch.Tensor"):
            check_images([[0.0]], (1, 8, 8))

    def test_labels(self):
        with pytest.raises(InputError, match=r"shape \(3,\)"):
            check_labels(torch.tensor([0, 1]), 3)
        with pytest.raises(InputError, match="outside"):
            check_labels(torch.tensor([0, 10]), 2, 10)
        with pytest.raises(InputError, match="integer"):
            check_labels(torch.tensor([0.0, 1.0]), 2, 10)

    def test_latents(self):
        with pytest.raises(InputError, match=r"\(N, 20\)"):
            check_latents(torch.zeros(2, 8), 20)
        with pytest.raises(InputError, match="NaN"):
            check_latents(torch.full((2, 20), float("nan")), 20)

    def test_compatible(self):
        with pytest.raises(InputError, match=r"shape mismatch.*\(1, 8, 8\).*\(1, 28, 28\)"):
            check_compatible(VAE((1, 8, 8), 4, [16]), DefenseGANClassifier("A"))
        with pytest.raises(InputError, match="no input_shape"):
            check_compatible(VAE((1, 8, 8), 4, [16]), torch.nn.Linear(64, 10))
        with pytest.raises(InputError, match="no output_shape"):
            check_compatible(torch.nn.Linear(4, 64), DigitsCNN())
