"""Encoders for generators: ``EncodedGenerator``, ``LatentEncoder``, ``train_encoder``."""

import pytest
import torch

from manifold_defense.defended import ProjectionConfig
from manifold_defense.generators import DefenseGANGenerator, EncodedGenerator, LatentEncoder, train_encoder
from manifold_defense.models import load_model
from manifold_defense.protocols import Encoded
from manifold_defense.validation import InputError


@pytest.fixture(scope="module")
def small_gan() -> DefenseGANGenerator:
    torch.manual_seed(0)
    return DefenseGANGenerator(latent_dim=8, dim=8).eval()


class TestSmoke:
    def test_smoke(self, small_gan, device, dtype):
        g = small_gan.to(device=device, dtype=dtype)
        enc = EncodedGenerator.from_generator(g, encoder_dim=8)
        z = g.sample_latent(3)
        torch.testing.assert_close(enc(z), g(z))  # the same generator
        assert isinstance(enc, Encoded) and not isinstance(g, Encoded)
        assert enc.encode(enc(z)).shape == (3, 8) and enc.encode(enc(z)).dtype == dtype
        assert LatentEncoder((1, 28, 28), 5, 4)(torch.rand(2, 1, 28, 28)).shape == (2, 5)
        small_gan.to(device="cpu", dtype=torch.float32)


class TestTraining:
    def test_trained_encoder_inverts_and_reloads(self, digits_vae, digits_test, tmp_path):
        """Fit a fresh encoder for the digits VAE's decoder (as for a GAN): G(E(x)) lands near x."""
        from manifold_defense import data

        x_train, x_test = data.load("digits", "train").images, digits_test.images[:64]
        model = EncodedGenerator.from_generator(digits_vae, encoder_dim=16)
        path = tmp_path / "enc.pt"
        hist = train_encoder(model, x_train, epochs=8, batch_size=64, lr=2e-3, path=path, progress=False)
        assert hist[-1]["image_mse"] < 0.7 * hist[0]["image_mse"]
        with torch.no_grad():
            rec = (model(model.encode(x_test)) - x_test).pow(2).flatten(1).mean(1)
            mean_img = (digits_vae(torch.zeros(64, digits_vae.latent_dim)) - x_test).pow(2).flatten(1).mean(1)
        assert float(rec.mean()) < 0.5 * float(mean_img.mean())  # a useful warm start, not the prior mean
        loaded = load_model(path)
        assert isinstance(loaded, EncodedGenerator)
        torch.testing.assert_close(loaded.encode(x_test), model.encode(x_test))
        z = torch.randn(5, digits_vae.latent_dim)
        torch.testing.assert_close(loaded(z), digits_vae(z))
        # the fast projection starts at the encoder when there is one, and searches when there is none
        assert ProjectionConfig().csgm_kwargs(loaded)["init"] == "encoder+search"
        assert ProjectionConfig().csgm_kwargs(DefenseGANGenerator(8, 4))["init"] == "search"
        res = ProjectionConfig().project(loaded, x_test[:8])
        assert bool((res.loss <= rec[:8] + 1e-6).all())


    def test_the_generator_stays_frozen_batch_norm_statistics_included(self):
        torch.manual_seed(0)
        model = EncodedGenerator.from_generator(DefenseGANGenerator(latent_dim=8, dim=4, batchnorm=True), encoder_dim=4)
        before = {k: v.clone() for k, v in model.blocks.state_dict().items()}
        assert any(k.endswith("running_mean") for k in before)
        train_encoder(model, torch.rand(32, 1, 28, 28), epochs=1, batch_size=16, progress=False)
        after = model.blocks.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


class TestException:
    def test_exception(self, small_gan, tmp_path):
        with pytest.raises(InputError, match="not a registered generator"):
            EncodedGenerator.from_generator(torch.nn.Linear(2, 2))
        enc = EncodedGenerator.from_generator(small_gan, encoder_dim=4)
        with pytest.raises(InputError, match="already has an encoder"):
            EncodedGenerator.from_generator(enc)
        with pytest.raises(InputError, match="needs an EncodedGenerator"):
            train_encoder(small_gan, torch.rand(4, 1, 28, 28), progress=False)
        with pytest.raises(InputError, match="image_weight"):
            train_encoder(enc, torch.rand(4, 1, 28, 28), image_weight=-1.0, progress=False)
        with pytest.raises(InputError, match="noise must be in"):
            train_encoder(enc, torch.rand(4, 1, 28, 28), noise=1.5, progress=False)
        with pytest.raises(InputError, match="needs image_weight"):
            train_encoder(enc, torch.rand(4, 1, 28, 28), noise=0.3, image_weight=0.0, progress=False)
        with pytest.raises(InputError, match="image shape"):
            train_encoder(enc, torch.rand(4, 1, 8, 8), progress=False)
        with pytest.raises(InputError, match="bad encoder shape"):
            LatentEncoder((28, 28), 4, 4)
