"""Random measurement models of AmbientGAN (Bora, Price, Dimakis 2018) and ambient GAN training."""

import pytest
import torch

from manifold_defense import data
from manifold_defense.ambient import (MEASUREMENTS, BlockPixels, BlurNoise, GaussianProjection, KeepPatch,
                                      make_measurement, measure_dataset)
from manifold_defense.generators import DefenseGANGenerator, WGANCritic, train_wgan
from manifold_defense.operators import Blur
from manifold_defense.validation import InputError

SHAPE = (1, 28, 28)
FAMILIES = [BlockPixels(SHAPE, p=0.8), BlurNoise(SHAPE, sigma=0.2), KeepPatch(SHAPE, size=14), GaussianProjection(SHAPE)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class TestSmoke:
    @pytest.mark.parametrize("measurement", FAMILIES, ids=lambda m: m.name)
    def test_shapes_seeds_and_fresh_parameters(self, measurement):
        x = torch.rand(6, *SHAPE)
        y = measurement(x, _gen(0))
        assert y.shape == (6, *measurement.output_shape) and bool(torch.isfinite(y).all())
        torch.testing.assert_close(measurement(x, _gen(0)), y)         # seeded: reproducible
        assert not torch.allclose(measurement(x, _gen(1)), y)          # other θ, other measurement
        g = _gen(0)
        a, b = measurement(x, g), measurement(x, g)
        assert not torch.allclose(a, b)                                  # every call draws afresh
        assert not torch.allclose(a[0], a[1]) or measurement.name == "blur_noise"
        assert measurement.config()["measurement"] == measurement.name and MEASUREMENTS[measurement.name]

    def test_block_pixels_drops_p_and_is_unbiased(self):
        m = BlockPixels(SHAPE, p=0.8)
        mask = m.sample(2000, _gen(0))["mask"]
        assert abs(float(mask.mean()) - 0.2) < 0.005
        x = torch.rand(1, *SHAPE).expand(2000, *SHAPE)
        mean = m(x, _gen(1)).mean(0)
        assert float((mean - x[0]).abs().mean()) < 0.05                # E[y] = x (kept pixels scaled by 1/(1−p))

    def test_keep_patch_keeps_one_patch_anywhere(self):
        params = KeepPatch(SHAPE, size=14).sample(500, _gen(0))
        mask = params["mask"]
        assert bool((mask.flatten(1).sum(1) == 14 * 14).all())
        tops = (mask[:, 0].sum(2) > 0).float().argmax(1)
        lefts = (mask[:, 0].sum(1) > 0).float().argmax(1)
        assert tops.min() == 0 and tops.max() == 28 - 14 and lefts.min() == 0 and lefts.max() == 28 - 14

    def test_blur_noise_is_blur_plus_noise_of_sigma(self):
        x = torch.rand(400, *SHAPE)
        y = BlurNoise(SHAPE, sigma=0.2)(x, _gen(0))
        blurred = Blur(SHAPE, sigma=1.0, size=5)(x)
        assert abs(float((y - blurred).std()) - 0.2) < 0.005
        torch.testing.assert_close(BlurNoise(SHAPE, sigma=0.0)(x, _gen(0)), blurred)


    def test_gaussian_projection_shows_theta_and_the_projection(self):
        m = GaussianProjection(SHAPE)
        x = torch.rand(5, *SHAPE)
        params = m.sample(5, _gen(0))
        y = m.apply(x, params)
        assert m.output_shape == (2, 28, 28) and y.shape == (5, 2, 28, 28)
        torch.testing.assert_close(y[:, :1], params["theta"])
        dots = (params["theta"] * x).flatten(1).sum(1) / 28
        torch.testing.assert_close(y[:, 1], dots[:, None, None].expand(5, 28, 28))

    def test_measure_dataset_is_seeded_and_its_parameters_reproduce_it(self):
        x = torch.rand(10, *SHAPE)
        m = KeepPatch(SHAPE, size=14)
        y, params = measure_dataset(m, x, seed=3, batch_size=4)
        y2, params2 = measure_dataset(m, x, seed=3, batch_size=4)
        assert torch.equal(y, y2) and torch.equal(params["mask"], params2["mask"]) and params["mask"].shape[0] == 10
        torch.testing.assert_close(m.apply(x, params), y)
        assert not torch.equal(measure_dataset(m, x, seed=4)[0], y)

    @pytest.mark.parametrize("family, kwargs, worst", [(BlockPixels, {"p": 0.5}, 0.4), (BlockPixels, {"p": 0.8}, 0.75),
                                                       (BlurNoise, {"sigma": 0.2}, 0.75)],
                             ids=["block_pixels_0.5", "block_pixels_0.8", "blur_noise"])
    def test_unmeasure_estimates_the_images(self, family, kwargs, worst):
        """The 'unmeasure' baseline's inversion (inpainting, Wiener) brings 64 digits closer to the truth than the
        measurements themselves (dropped pixels at 0, the blurred noisy image): MSE ratio below ``worst`` (measured
        .30, .69, .67 on 8×8 digits)."""
        pytest.importorskip("skimage")
        x = data.load("digits", "test").images[:64]
        m = family(tuple(x.shape[1:]), **kwargs)
        y, params = measure_dataset(m, x, seed=0)
        est = m.unmeasure(y, params)
        assert est.shape == x.shape and est.min() >= 0 and est.max() <= 1
        raw = y * (1 - m.p) if isinstance(m, BlockPixels) else y
        assert float(((est - x) ** 2).mean()) < worst * float(((raw - x) ** 2).mean())


class TestGradcheck:
    @pytest.mark.parametrize("measurement", FAMILIES, ids=lambda m: m.name)
    def test_differentiable_in_the_image(self, measurement):
        m = measurement.double()
        x = torch.rand(2, *SHAPE, dtype=torch.float64, requires_grad=True)
        params = {k: v.double() for k, v in m.sample(2, _gen(0)).items()}
        assert torch.autograd.gradcheck(lambda t: m.apply(t, params), (x,))


class TestAmbientTraining:
    def test_resumed_run_draws_the_same_measurements(self, tmp_path):
        """30 iterations then extended to 60 == 60 in one go: the measurements' θ come from the checkpointed
        data generator."""
        x = torch.rand(128, *SHAPE)
        m = BlockPixels(SHAPE, p=0.5)

        def run(iterations, path):
            torch.manual_seed(0)
            g, c = DefenseGANGenerator(latent_dim=8, dim=2), WGANCritic(dim=2)
            hist = train_wgan(g, c, x, iterations=iterations, iterations_per_epoch=30, critic_iters=1, batch_size=16,
                              measurement=m, path=path, progress=False)
            return g, hist

        g, hist = run(60, tmp_path / "a.pt")
        run(30, tmp_path / "b.pt")
        g2, _ = run(60, tmp_path / "b.pt")
        z = torch.randn(8, 8, generator=_gen(3))
        torch.testing.assert_close(g2(z), g(z))
        from manifold_defense.checkpoint import load_checkpoint

        config = load_checkpoint(tmp_path / "a.pt")["metadata"]["config"]
        assert config["measurement"] == m.config() and config["measure"] == "ambient"

    def test_ambient_and_ignore_see_different_fakes(self, tmp_path):
        """'ignore' shows the critic unmeasured samples: the runs part ways from the first step."""
        x = torch.rand(64, *SHAPE)
        outs = {}
        for mode in ("ambient", "ignore"):
            torch.manual_seed(0)
            g, c = DefenseGANGenerator(latent_dim=8, dim=2), WGANCritic(dim=2)
            train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, critic_iters=1, batch_size=16,
                       measurement=BlockPixels(SHAPE, p=0.9), measure=mode, progress=False)
            outs[mode] = g(torch.randn(4, 8, generator=_gen(0)))
        assert not torch.allclose(outs["ambient"], outs["ignore"])


    def test_gaussian_projection_trains_with_a_two_channel_critic(self, tmp_path):
        x = torch.rand(64, *SHAPE)
        torch.manual_seed(0)
        g, c = DefenseGANGenerator(latent_dim=8, dim=2), WGANCritic(dim=2, channels=2)
        hist = train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, critic_iters=1, batch_size=16,
                          measurement=GaussianProjection(SHAPE), progress=False)
        assert len(hist) == 1 and all(torch.isfinite(torch.tensor(v)) for v in hist[0].values())


class TestException:
    @pytest.mark.parametrize("name, kwargs, match", [
        ("block_pixels", {"p": 1.0}, r"\[0, 1\)"),
        ("block_pixels", {"p": -0.1}, r"\[0, 1\)"),
        ("keep_patch", {"size": 29}, "patch size"),
        ("blur_noise", {"sigma": -1.0}, "sigma"),
        ("block_pixels", {"q": 0.5}, "unexpected keyword"),
        ("inpaint", {}, "unknown measurement"),
    ])
    def test_bad_measurements(self, name, kwargs, match):
        with pytest.raises(InputError, match=match):
            make_measurement(name, SHAPE, **kwargs)

    def test_bad_training_settings_fail_before_training(self, tmp_path):
        x = torch.rand(32, *SHAPE)
        g, c = DefenseGANGenerator(latent_dim=4, dim=2), WGANCritic(dim=2)
        with pytest.raises(InputError, match="takes images of shape"):
            train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, measurement=BlockPixels((1, 8, 8)),
                       path=tmp_path / "g.pt", progress=False)
        with pytest.raises(InputError, match="real_measured=True needs"):
            train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, real_measured=True, path=tmp_path / "g.pt",
                       progress=False)
        with pytest.raises(InputError, match="measure must be"):
            train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, measurement=BlockPixels(SHAPE),
                       measure="unmeasure", path=tmp_path / "g.pt", progress=False)
        assert not (tmp_path / "g.pt").exists()
        with pytest.raises(InputError, match="critic cannot take 'gaussian_projection'"):
            train_wgan(g, c, x, iterations=10, iterations_per_epoch=10, measurement=GaussianProjection(SHAPE),
                       path=tmp_path / "g.pt", progress=False)
        with pytest.raises(InputError, match="measurements are not images"):
            train_wgan(g, WGANCritic(dim=2, channels=2), x, iterations=10, iterations_per_epoch=10,
                       measurement=GaussianProjection(SHAPE), measure="ignore", path=tmp_path / "g.pt", progress=False)
        with pytest.raises(InputError, match="x_train"):  # measured data of the wrong shape for its measurement
            train_wgan(g, WGANCritic(dim=2, channels=2), x, iterations=10, iterations_per_epoch=10,
                       measurement=GaussianProjection(SHAPE), real_measured=True, path=tmp_path / "g.pt",
                       progress=False)
        with pytest.raises(InputError, match="no inverse"):
            GaussianProjection(SHAPE).unmeasure(torch.rand(2, 2, 28, 28), GaussianProjection(SHAPE).sample(2))
        with pytest.raises(InputError, match="no inverse"):
            KeepPatch(SHAPE).unmeasure(torch.rand(2, *SHAPE), KeepPatch(SHAPE).sample(2))
        with pytest.raises(InputError, match="holds 3 samples but x holds 2"):
            BlockPixels(SHAPE).apply(torch.rand(2, *SHAPE), BlockPixels(SHAPE).sample(3))
