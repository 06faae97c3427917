"""Class-conditional generators: one VAE per class (Stutz et al. 2019)."""

import pytest
import torch

from manifold_defense.defended import DefendedModel
from manifold_defense.generators import VAE, ClassVAEs, class_groups, reconstruction_mse, train_vae
from manifold_defense.inversion import csgm
from manifold_defense.models import build_model, load_model, save_model
from manifold_defense.protocols import ClassConditional, Generator
from manifold_defense.validation import InputError


@pytest.fixture
def tiny() -> ClassVAEs:
    torch.manual_seed(0)
    return ClassVAEs(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,), num_classes=4)


class TestSmoke:
    def test_protocols(self, tiny):
        assert isinstance(tiny, ClassConditional) and not isinstance(tiny, Generator)
        assert isinstance(tiny.condition(2), VAE) and isinstance(tiny.condition(2), Generator)

    def test_forward_is_each_class_model(self, tiny, rng):
        z = torch.randn(9, 3, generator=rng)
        y = torch.tensor([3, 0, 0, 2, 1, 3, 3, 0, 2])
        out = tiny(z, y)
        for i in range(len(y)):
            assert torch.allclose(out[i], tiny.condition(int(y[i]))(z[i:i + 1])[0])
        x = out.detach()
        enc = tiny.encode(x, y)
        for i in range(len(y)):
            assert torch.allclose(enc[i], tiny.condition(int(y[i])).encode(x[i:i + 1])[0])

    def test_loss_is_the_mean_of_the_class_losses(self, tiny, rng):
        x = torch.rand(6, 1, 8, 8, generator=rng)
        y = torch.tensor([0, 0, 1, 1, 1, 3])
        torch.manual_seed(1)
        joint = tiny.loss(x, y)
        torch.manual_seed(1)
        parts = sum(tiny.condition(c).loss(x[y == c]) * int((y == c).sum()) for c in (0, 1, 3)) / len(x)
        assert torch.allclose(joint, parts)

    def test_class_groups(self):
        groups = dict((c, rows.tolist()) for c, rows in class_groups(torch.tensor([2, 0, 2, 1]), 3))
        assert groups == {0: [1], 1: [3], 2: [0, 2]}

    def test_checkpoint_roundtrip(self, tiny, tmp_path):
        save_model(tmp_path / "g.pt", tiny)
        back = load_model(tmp_path / "g.pt")
        z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
        assert torch.equal(back(z, y), tiny(z, y))
        assert isinstance(build_model("class-vaes", tiny.config), ClassVAEs)


class TestGradcheck:
    def test_gradcheck_through_the_class_groups(self, tiny, rng):
        g = tiny.double()
        z = torch.randn(5, 3, generator=rng, dtype=torch.float64, requires_grad=True)
        y = torch.tensor([1, 0, 1, 3, 0])
        assert torch.autograd.gradcheck(lambda v: g(v, y), (z,))


class TestTraining:
    def test_each_class_model_learns_its_class(self, digits_train, digits_test):
        torch.manual_seed(0)
        model = ClassVAEs(image_shape=(1, 8, 8), latent_dim=4, hidden=(64,), num_classes=10)
        before = reconstruction_mse(model, digits_test.images, labels=digits_test.labels)
        train_vae(model, digits_train.images, digits_train.labels, epochs=15, batch_size=64, progress=False)
        own = reconstruction_mse(model, digits_test.images, labels=digits_test.labels)
        wrong = reconstruction_mse(model, digits_test.images, labels=(digits_test.labels + 1) % 10)
        assert own < 0.5 * before
        assert own < 0.7 * wrong  # a class model does not reconstruct the other digits: the range is the class's

    def test_zoo_model_ranges_are_classes(self, digits_class_vaes, digits_test):
        x, y = digits_test.images[:40], digits_test.labels[:40]
        own = csgm(digits_class_vaes.condition(3), x[y == 3], steps=100, restarts=2, init="encoder").loss.mean()
        other = csgm(digits_class_vaes.condition(3), x[y != 3], steps=100, restarts=2, init="encoder").loss.mean()
        assert float(own) < 0.5 * float(other)


class TestException:
    def test_class_out_of_range(self, tiny):
        with pytest.raises(InputError, match="outside the generator's 4 classes"):
            tiny.condition(4)
        with pytest.raises(InputError, match="outside"):
            tiny(torch.randn(2, 3), torch.tensor([0, 7]))
        with pytest.raises(InputError, match="integer"):
            tiny.condition(1.0)
        with pytest.raises(InputError, match="labels"):
            tiny(torch.randn(2, 3), torch.tensor([0]))

    def test_conditional_where_one_range_is_expected(self, tiny):
        with pytest.raises(InputError, match="condition"):
            csgm(tiny, torch.rand(2, 1, 8, 8))

        class Clf(torch.nn.Module):
            input_shape, num_classes = (1, 8, 8), 4

            def forward(self, x):
                return x.flatten(1)[:, :4]

        with pytest.raises(InputError, match="class-conditional"):
            DefendedModel(Clf(), tiny)

    def test_training_needs_labels(self, tiny):
        with pytest.raises(InputError, match="y_train"):
            train_vae(tiny, torch.rand(8, 1, 8, 8), epochs=1, progress=False)
