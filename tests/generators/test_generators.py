"""Generators: VAE, Defense-GAN generator and WGAN critic; splits, encoders, training."""

import pytest
import torch

from manifold_defense.generators import VAE, DefenseGANGenerator, Generator, WGANCritic, train_vae, train_wgan
from manifold_defense.generators.train import reconstruction_mse
from manifold_defense.protocols import Encoded
from manifold_defense.validation import InputError

ARCHS = {
    "vae-mnist": lambda: VAE((1, 28, 28), 20, [500, 500]),
    "vae-digits": lambda: VAE((1, 8, 8), 8, [64, 64]),
    "defensegan": lambda: DefenseGANGenerator(latent_dim=16, dim=8),
    "defensegan-bn": lambda: DefenseGANGenerator(latent_dim=16, dim=8, batchnorm=True).eval(),
}


@pytest.fixture(params=list(ARCHS))
def generator(request, device, dtype) -> Generator:
    torch.manual_seed(0)
    return ARCHS[request.param]().to(device=device, dtype=dtype)


class TestSmoke:
    def test_smoke(self, generator, device, dtype):
        z = generator.sample_latent(5)
        assert z.shape == (5, generator.latent_dim) and z.device.type == device.type and z.dtype == dtype
        x = generator(z)
        assert x.shape == (5, *generator.output_shape) and x.dtype == dtype
        assert float(x.detach().min()) >= 0.0 and float(x.detach().max()) <= 1.0

    def test_critic_shape(self):
        assert WGANCritic(dim=4)(torch.rand(3, 1, 28, 28)).shape == (3,)


class TestSplit:
    def test_split_composes_to_generator(self, generator):
        z = generator.sample_latent(4, torch.Generator(device=next(generator.parameters()).device).manual_seed(1))
        full = generator(z)
        for i in range(generator.num_splits + 1):
            g1, g2 = generator.split(i)
            h = g1(z)
            assert h.shape[1:] == generator.intermediate_shape(i)
            torch.testing.assert_close(g2(h), full)
        assert generator.num_splits >= 3


class TestSeeding:
    def test_sample_latent_is_seeded(self, generator):
        dev = next(generator.parameters()).device
        a = generator.sample_latent(3, torch.Generator(device=dev).manual_seed(7))
        b = generator.sample_latent(3, torch.Generator(device=dev).manual_seed(7))
        assert torch.equal(a, b)


class TestEncoder:
    def test_encoder(self):
        vae = VAE((1, 8, 8), 4, [16])
        assert isinstance(vae, Encoded) and vae.encode(torch.rand(3, 1, 8, 8)).shape == (3, 4)
        with pytest.raises(InputError, match="channel count"):
            vae.encode(torch.rand(3, 3, 8, 8))
        with pytest.raises(InputError, match="NaN"):
            vae.encode(torch.full((3, 1, 8, 8), float("nan")))
        gan = DefenseGANGenerator(latent_dim=4, dim=2)
        assert not isinstance(gan, Encoded) and not hasattr(gan, "encode")


class TestTraining:
    def test_vae_training_beats_untrained(self, digits_test):
        from manifold_defense import data

        x = data.load("digits", "train").images
        torch.manual_seed(0)
        vae = VAE((1, 8, 8), 8, [64, 64])
        before = reconstruction_mse(vae, digits_test.images)
        hist = train_vae(vae, x, epochs=40, batch_size=64, lr=3e-3, progress=False)
        after = reconstruction_mse(vae, digits_test.images)
        assert hist[-1]["neg_elbo"] < 0.8 * hist[0]["neg_elbo"]
        # Predicting every pixel by the mean image scores ~0.074 on the digits test set; the VAE must beat it.
        mean_mse = float((digits_test.images - x.mean(0)).pow(2).mean())
        assert after < 0.8 * mean_mse < before

    def test_wgan_training_moves_samples_towards_data(self, tmp_path):
        from manifold_defense import data

        x = torch.nn.functional.interpolate(data.load("digits", "train").images, size=28, mode="bilinear").clamp(0, 1)
        g, c = DefenseGANGenerator(latent_dim=16, dim=8), WGANCritic(dim=8)
        z = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = (g(z).mean(0) - x.mean(0)).pow(2).mean()
        hist = train_wgan(g, c, x, iterations=60, iterations_per_epoch=30, critic_iters=2, batch_size=32, lr=1e-3,
                          path=tmp_path / "gan.pt", progress=False)
        with torch.no_grad():
            after = (g(z).mean(0) - x.mean(0)).pow(2).mean()
        assert len(hist) == 2 and after < 0.5 * before  # the sample mean moves to the data mean
        from manifold_defense.models import load_model

        loaded = load_model(tmp_path / "gan.pt")
        torch.testing.assert_close(loaded(z), g.eval()(z))
        assert isinstance(load_model(tmp_path / "gan.pt", key="critic"), WGANCritic)

    def test_hinge_gan_with_ema_trains_resumes_and_keeps_the_average(self, tmp_path):
        from manifold_defense import data
        from manifold_defense.models import load_model

        x = torch.nn.functional.interpolate(data.load("digits", "train").images, size=28, mode="bilinear").clamp(0, 1)
        z = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))

        def run(iterations, path):
            torch.manual_seed(0)
            g, c = DefenseGANGenerator(latent_dim=16, dim=8), WGANCritic(dim=8, spectral_norm=True)
            with torch.no_grad():
                before = (g(z).mean(0) - x.mean(0)).pow(2).mean()
            hist = train_wgan(g, c, x, iterations=iterations, iterations_per_epoch=30, critic_iters=1, batch_size=32,
                              lr=2e-3, betas=(0.5, 0.999), loss="hinge", ema=0.9, path=path, progress=False)
            return g, before, hist

        g, before, hist = run(60, tmp_path / "a.pt")
        with torch.no_grad():
            after = (g(z).mean(0) - x.mean(0)).pow(2).mean()
        assert len(hist) == 2 and after < 0.7 * before  # the average lags the trained copy a little
        assert not any(p.requires_grad for p in g.parameters())  # the average, not the trained copy
        trained = load_model(tmp_path / "a.pt", key="trained_generator")
        assert not torch.allclose(trained(z), g(z))  # the average differs from the last iterate
        torch.testing.assert_close(load_model(tmp_path / "a.pt")(z), g.eval()(z))
        # 30 iterations, then extended to 60 from the checkpoint == 60 in one go
        run(30, tmp_path / "b.pt")
        g2, _, _ = run(60, tmp_path / "b.pt")
        torch.testing.assert_close(g2(z), g(z))

    def test_spectral_norm_critic_layers_have_unit_spectral_norm(self):
        torch.manual_seed(0)
        c = WGANCritic(dim=8, spectral_norm=True).train()
        for _ in range(30):  # power iterations run in training-mode forwards
            c(torch.rand(4, 1, 28, 28))
        c.eval()
        w = c.net[-1].weight  # the normalised weight of the linear layer
        assert abs(float(torch.linalg.matrix_norm(w.detach(), ord=2)) - 1.0) < 1e-2
        assert c.config["spectral_norm"] is True and "spectral_norm" not in WGANCritic(dim=8).config


class TestExceptionTrainers:
    @pytest.mark.parametrize("kwargs", [{"loss": "lsgan"}, {"ema": 1.0}, {"ema": -0.1}])
    def test_bad_gan_settings(self, kwargs):
        x = torch.rand(64, 1, 28, 28)
        with pytest.raises(ValueError):
            train_wgan(DefenseGANGenerator(latent_dim=4, dim=2), WGANCritic(dim=2), x, iterations=30,
                       iterations_per_epoch=30, progress=False, **kwargs)


class TestGradcheck:
    def test_vae(self):
        torch.manual_seed(0)
        g = VAE((1, 4, 4), 3, [5]).double()
        z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(g, (z,))
        x = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: g.posterior(t)[0], (x,))

    def test_defensegan(self):
        torch.manual_seed(0)
        g = DefenseGANGenerator(latent_dim=3, dim=1).double()
        z = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 1, 28, 28, dtype=torch.float64)  # 4 random projections of the 784 outputs keep it fast
        assert torch.autograd.gradcheck(lambda t: (g(t).unsqueeze(1) * w).sum((2, 3, 4)), (z,))


class TestException:
    def test_exception(self, generator):
        with pytest.raises(InputError, match=rf"\(N, {generator.latent_dim}\)"):
            generator(torch.zeros(2, generator.latent_dim + 1))
        with pytest.raises(InputError, match="split index"):
            generator.split(generator.num_splits + 1)
