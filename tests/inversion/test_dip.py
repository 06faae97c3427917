"""Deep Image Prior (Ulyanov et al. 2018; Van Veen et al. 2018) on the engine."""

import pytest
import torch

from manifold_defense.generators import DeepImagePrior
from manifold_defense.inversion import (
    dip,
    fit_dip_prior,
    invert,
    total_variation,
)
from manifold_defense.operators import (
    GaussianMeasurements,
    GaussianNoise,
    Inpainting,
    Nonlinear,
    PartialCirculant,
    SuperResolution,
)
from manifold_defense.validation import InputError

DIP_SHAPE = (1, 8, 8)


DIP_OPERATORS = {
    "gaussian": lambda: GaussianMeasurements(DIP_SHAPE, 40, seed=1),
    "circulant": lambda: PartialCirculant(DIP_SHAPE, 40, seed=1),
    "inpainting": lambda: Inpainting(DIP_SHAPE, fraction=0.5, seed=1),
    "superres": lambda: SuperResolution(DIP_SHAPE, 2, kind="box"),
}


def _dip_net(seed: int = 0) -> DeepImagePrior:
    return DeepImagePrior(DIP_SHAPE, channels=16, latent_channels=8, seed=seed)


@pytest.mark.parametrize("name", list(DIP_OPERATORS))
def test_smoke_dip_fits_measurements_and_beats_a_trivial_image(name, digits_test):
    x = digits_test.images[:8]
    op = DIP_OPERATORS[name]()
    y = op(x)
    net = _dip_net()
    start = dip(net, y, op, steps=0)
    res = dip(net, y, op, steps=300, lr=0.01)
    assert res.x.shape == x.shape and res.z.shape == (8, net.num_weights)
    # the weights fit the measurements ...
    assert float(res.loss.mean()) < 0.01 * float(start.loss.mean())
    # ... and the untrained network's image prior fills in what the operator lost: far better than the
    # best constant image
    mse = (res.x - x).pow(2).flatten(1).mean(1).mean()
    assert float(mse) < 0.5 * float((x - x.mean()).pow(2).mean())


def test_dip_needs_no_adjoint(digits_test):
    # DIP differentiates through the operator with autograd: a nonlinear operator without an adjoint works
    x = digits_test.images[:4]
    op = Nonlinear(lambda t: torch.tanh(3 * t).flatten(1)[:, ::2], DIP_SHAPE)
    y = op(x)
    start = dip(_dip_net(), y, op, steps=0, loss=lambda p, q: (p - q).pow(2).sum(1))
    res = dip(_dip_net(), y, op, steps=150, lr=0.01, loss=lambda p, q: (p - q).pow(2).sum(1))
    assert float(res.loss.mean()) < 0.05 * float(start.loss.mean())


def test_dip_networks_are_independent_per_sample(digits_test):
    x = digits_test.images[:3]
    op = GaussianMeasurements(DIP_SHAPE, 30, seed=2)
    y = op(x)
    both = dip(_dip_net(), y, op, steps=40, lr=0.01, restarts=2)
    alone = dip(_dip_net(), y[1:2], op, steps=40, lr=0.01, restarts=2)
    torch.testing.assert_close(both.x[1:2], alone.x, atol=1e-5, rtol=1e-4)
    assert both.restart.shape == (3,) and both.generator_evals.shape == (3,)


def test_dip_stops_at_the_noise_level(digits_test):
    x = digits_test.images[:6]
    op = GaussianMeasurements(DIP_SHAPE, 40, seed=3)
    y = GaussianNoise.per_measurement(0.3, 40, seed=4)(op(x))
    noise_energy = float((y - op(x)).pow(2).sum(1).mean())
    full = dip(_dip_net(), y, op, steps=400, lr=0.01, loss="sum")
    stopped = dip(_dip_net(), y, op, steps=400, lr=0.01, loss="sum", stop_at=noise_energy)
    # run to the end, DIP fits the noise too; stopped at the discrepancy it uses far fewer evaluations
    assert float(full.loss.mean()) < 0.2 * noise_energy
    assert bool((stopped.loss <= noise_energy).all())
    assert float(stopped.generator_evals.mean()) < 0.5 * float(full.generator_evals.mean())


def test_dip_learned_prior_and_total_variation(digits_test, digits_train):
    prior = fit_dip_prior(_dip_net(), digits_train.images[:12], steps=150)
    for mu, prec, (sl, shape) in zip(prior.means, prior.precisions, prior.slices):
        assert mu.shape == (shape[0],) and bool((torch.linalg.eigvalsh(prec) > 0).all())
    net = _dip_net()
    fresh = net.flat_init(4, torch.Generator().manual_seed(9))
    fitted = dip(net, digits_train.images[12:16], None, steps=150).z
    # weights fitted to digits are more probable under the prior than fresh initialisations
    assert float(prior.penalty(fitted).mean()) < float(prior.penalty(fresh).mean())
    x = digits_test.images[:6]
    op = GaussianMeasurements(DIP_SHAPE, 20, seed=5)
    y = op(x)
    plain = dip(net, y, op, steps=150)
    reg = dip(net, y, op, steps=150, weight_prior=prior, prior_weight=1e-2, tv_weight=1e-2)
    assert float(prior.penalty(reg.z).mean()) < float(prior.penalty(plain.z).mean())
    assert float(total_variation(reg.x).mean()) < float(total_variation(plain.x).mean())
    assert reg.info["prior_weight"] == 1e-2


def test_dip_through_invert(digits_test):
    x = digits_test.images[:2]
    a = invert(_dip_net(), x, method="dip", steps=20)
    b = dip(_dip_net(), x, steps=20)
    torch.testing.assert_close(a.x, b.x)


def test_exception_dip(digits_test, small_vae):
    x = digits_test.images[:2]
    net = _dip_net()
    with pytest.raises(InputError, match="shape"):
        dip(net, x, GaussianMeasurements((1, 28, 28), 10))
    with pytest.raises(InputError, match="NaN"):
        dip(net, torch.full_like(x, float("nan")))
    with pytest.raises(InputError, match="NaN"):  # also with a custom loss
        dip(net, torch.full_like(x, float("inf")), loss=lambda p, y: (p - y).abs().flatten(1).sum(1))
    with pytest.raises(InputError, match="weight_prior"):
        dip(net, x, prior_weight=0.1)
    with pytest.raises(InputError, match=">= 0"):
        dip(net, x, tv_weight=-1.0)
    with pytest.raises(InputError, match="DeepImagePrior"):
        dip(small_vae, x)
    with pytest.raises(InputError, match="at least 2"):
        fit_dip_prior(net, x[:1])
