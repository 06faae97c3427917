import pytest
import torch

from manifold_defense.generators import VAE, DeepImagePrior, RandomReLUGenerator
from manifold_defense.inversion import (
    csgm,
    dead_zone_loss,
    dip,
    fit_dip_prior,
    ilo,
    invert,
    project_l1_ball,
    subgradient,
    total_variation,
)
from manifold_defense.operators import (
    GaussianMeasurements,
    GaussianNoise,
    Identity,
    Inpainting,
    Nonlinear,
    PartialCirculant,
    SuperResolution,
)
from manifold_defense.validation import InputError


def _bisection_l1(v: torch.Tensor, r: float) -> torch.Tensor:
    if float(v.abs().sum()) <= r:
        return v
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((v.abs() - mid).clamp_min(0).sum()) > r else (lo, mid)
    return v.sign() * (v.abs() - hi).clamp_min(0)


def test_project_l1_ball_matches_bisection(rng):
    v = torch.randn(6, 40, generator=rng, dtype=torch.float64)
    r = torch.tensor([0.0, 0.3, 1.0, 5.0, 20.0, 1e3], dtype=torch.float64)
    p = project_l1_ball(v, r)
    for i in range(6):
        torch.testing.assert_close(p[i], _bisection_l1(v[i], float(r[i])), atol=1e-10, rtol=0)
    assert bool((p.abs().sum(1) <= r + 1e-9).all())


@pytest.fixture(scope="module")
def relu_problem():
    G = RandomReLUGenerator((6, 120, 80, 200), seed=1)
    z = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = G(z)
    A = GaussianMeasurements(G.output_shape, 48, seed=0)
    return G, z, x, A, A(x)


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1))


def test_smoke_csgm_recovers_latents(relu_problem):
    G, z, x, A, y = relu_problem
    res = csgm(G, y, A, steps=1500, lr=0.05, restarts=4, loss="sse", seed=0)
    assert res.z.shape == z.shape and res.x.shape == x.shape and res.history.shape == (1500, 6)
    assert float(_rel(res.x, x).max()) < 1e-2
    assert bool((res.loss <= res.history[0] + 1e-12).all())  # descent lowered the objective
    assert int(res.generator_evals.min()) == 4 * 1501  # 4 restarts × (steps + final check)


def test_restarts_are_batched_and_best_is_kept(relu_problem):
    G, _, _, A, y = relu_problem
    one = csgm(G, y, A, steps=200, lr=0.05, restarts=1, seed=5, loss="sse")
    many = csgm(G, y, A, steps=200, lr=0.05, restarts=6, seed=5, loss="sse")
    # Restart 0 of the 6 starts where the single run starts; keeping the best can only help.
    assert bool((many.loss <= one.loss + 1e-9).all())


def test_early_stopping_saves_evaluations(relu_problem):
    G, _, x, A, y = relu_problem
    full = csgm(G, y, A, steps=3000, lr=0.05, restarts=2, loss="sse")
    early = csgm(G, y, A, steps=3000, lr=0.05, restarts=2, loss="sse", tol=1e-4, patience=50)
    assert early.evals_per_sample < 0.7 * full.evals_per_sample
    assert float(_rel(early.x, x).median()) < 0.05


def test_subgradient_with_negation(relu_problem):
    G, z, x, A, y = relu_problem
    res = subgradient(G, y, A, steps=3000, lr=0.5, restarts=3, seed=0)
    assert float((_rel(res.x, x) < 1e-3).float().mean()) >= 5 / 6
    res_start_negative = subgradient(G, y, A, steps=1, lr=0.0, init_scale=1.0, seed=0)
    assert res_start_negative.generator_evals.min() >= 2  # the negation check costs a pass


def test_prune_after_continues_only_the_best_restart(relu_problem):
    G, _, x, A, y = relu_problem
    pruned = csgm(G, y, A, steps=400, lr=0.05, restarts=4, loss="sse", prune_after=20, seed=0)
    # 4 restarts × 20 steps (+ the last-iterate check) then one restart for 380 steps (+ check)
    assert int(pruned.generator_evals.min()) == 4 * 21 + 381
    first = csgm(G, y, A, steps=20, lr=0.05, restarts=4, loss="sse", seed=0)
    assert bool((pruned.loss <= first.loss + 1e-6).all())  # phase 2 starts at phase 1's winner
    torch.testing.assert_close(pruned.restart, first.restart)
    assert pruned.history.shape == (400, 6)
    full = csgm(G, y, A, steps=400, lr=0.05, restarts=4, loss="sse", seed=0)
    assert pruned.evals_per_sample < 0.35 * full.evals_per_sample


@pytest.mark.parametrize("loss", ["mse", "sum", "sse"])
def test_search_ranks_like_the_loss(relu_problem, loss):
    """The matrix-product ranking of the search equals ranking by the loss itself."""
    from manifold_defense.inversion.csgm import search_starts as _search_starts
    from manifold_defense.inversion.terms import per_sample_loss as _per_sample_loss

    G, _, _, A, y = relu_problem
    fast = _search_starts(G, A, y, loss, 0.0, 3, 700, 1.0, torch.Generator().manual_seed(0))
    slow = _search_starts(G, A, y, _per_sample_loss(loss), 0.0, 3, 700, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast, slow)
    assert fast.shape == (6, 3, G.latent_dim)


def test_encoder_plus_search_init_counts_shared_search(small_vae, digits_test):
    x = digits_test.images[:20]
    res = csgm(small_vae, x, steps=0, restarts=3, init="encoder+search", search_candidates=400, seed=0)
    with torch.no_grad():
        enc = (small_vae(small_vae.encode(x)) - x).pow(2).flatten(1).mean(1)
    assert bool((res.loss <= enc + 1e-6).all())  # the encoder's code is one of the restarts
    # each sample: 3 restarts × 1 evaluation, plus its share of the 400 search candidates
    torch.testing.assert_close(res.generator_evals, torch.full((20,), 3 + 400 / 20))
    assert res.info["search_evals_per_sample"] == 20.0


def test_prior_shrinks_latents(relu_problem):
    G, _, _, A, y = relu_problem
    free = csgm(G, y, A, steps=300, lr=0.05, seed=1)
    reg = csgm(G, y, A, steps=300, lr=0.05, seed=1, prior_weight=1.0)
    assert float(reg.z.norm(dim=1).mean()) < float(free.z.norm(dim=1).mean())


@pytest.fixture(scope="module")
def small_vae():
    from manifold_defense import data
    from manifold_defense.generators import train_vae

    torch.manual_seed(0)
    vae = VAE((1, 8, 8), 6, [64, 64])
    train_vae(vae, data.load("digits", "train").images, epochs=40, batch_size=64, lr=3e-3, progress=False)
    return vae.eval()


def test_projection_lowers_residual_and_encoder_warm_start(small_vae, digits_test):
    x = digits_test.images[:16]
    res_rand = csgm(small_vae, x, steps=300, lr=0.05, restarts=2, seed=0)
    with torch.no_grad():
        enc = (small_vae(small_vae.encode(x)) - x).pow(2).flatten(1).mean(1)
        start = (small_vae(small_vae.sample_latent(16, torch.Generator().manual_seed(0))) - x).pow(2).flatten(1).mean(1)
    res_enc = csgm(small_vae, x, steps=300, lr=0.05, restarts=2, init="encoder", seed=0)
    assert float(res_rand.loss.mean()) < 0.7 * float(start.mean())
    assert bool((res_enc.loss <= enc + 1e-6).all())  # starts at the encoder's code and only improves
    assert float(res_enc.loss.mean()) <= float(res_rand.loss.mean()) * 1.05


def test_ilo_not_worse_than_csgm_and_extends_range(small_vae, digits_test):
    x = digits_test.images[:12]
    A = GaussianMeasurements((1, 8, 8), 40, seed=0)
    y = A(x)
    kw = {"steps": 300, "lr": 0.05, "restarts": 2}
    base = csgm(small_vae, y, A, seed=0, **kw)
    res = ilo(small_vae, y, A, csgm_kwargs=kw, steps=150, seed=0)
    err_csgm = (base.x - x).pow(2).flatten(1).mean(1)
    err_ilo = (res.x - x).pow(2).flatten(1).mean(1)
    assert float(err_ilo.mean()) <= float(err_csgm.mean())
    assert res.info["relative_radii"].shape == (12, small_vae.num_splits)
    assert res.generator_evals.min() > base.generator_evals.min()
    fixed = ilo(small_vae, y, A, csgm_kwargs=kw, steps=100, radii=[0.0, 0.0, 0.0], seed=0)
    torch.testing.assert_close(fixed.x, base.x, atol=1e-5, rtol=0)  # zero radius = stay on the range


def test_guidance_loss_with_nonlinear_operator(small_vae):
    """Any differentiable loss on A(G(z)): steer the VAE towards a class of a (tiny) classifier."""
    from manifold_defense.classifiers import DigitsCNN

    torch.manual_seed(0)
    clf = DigitsCNN(width=4).eval()
    target = torch.full((4,), 3)
    res = csgm(small_vae, target, Nonlinear(clf, (1, 8, 8)), steps=100, lr=0.1,
               loss=lambda logits, t: torch.nn.functional.cross_entropy(logits, t, reduction="none"))
    assert bool((res.loss < res.history[0] + 1e-9).all())
    assert float(res.history[-1].mean()) < float(res.history[0].mean())


def test_divergence_is_flagged_not_returned_as_nan(relu_problem):
    G, _, _, A, y = relu_problem
    res = csgm(G, y, A, steps=50, lr=1e30, optimizer="gd", loss="sse")
    assert bool(torch.isfinite(res.x).all()) and bool(torch.isfinite(res.loss).all())
    assert bool(res.diverged.any())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradcheck_unrolled_csgm(optimizer):
    """differentiable=True: the result is a differentiable function of the measurements (and encoder start)."""
    torch.manual_seed(0)
    gen = VAE((1, 3, 3), latent_dim=2, hidden=(6,)).double()
    A = GaussianMeasurements(gen.output_shape, 5, seed=0).double()
    y = A(torch.rand(2, 1, 3, 3, dtype=torch.float64)).requires_grad_(True)

    def f(y):
        return csgm(gen, y, A, steps=4, restarts=2, lr=0.05, optimizer=optimizer, init="encoder",
                    differentiable=True).x

    assert torch.autograd.gradcheck(f, (y,), eps=1e-6, atol=1e-6)


def test_unrolled_csgm_matches_plain_csgm(relu_problem):
    G, _, _, A, y = relu_problem
    plain = csgm(G, y, A, steps=30, restarts=2, lr=0.05, optimizer="sgd", seed=1)
    unrolled = csgm(G, y, A, steps=30, restarts=2, lr=0.05, optimizer="sgd", seed=1, differentiable=True)
    torch.testing.assert_close(unrolled.x.detach(), plain.x, atol=1e-6, rtol=1e-5)
    assert plain.x.grad_fn is None and unrolled.x.grad_fn is not None


def test_dead_zone_loss():
    y = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([0.1, -0.2, 0.25, 0.0, 0.5, -0.6, 0.0, 0.0]).view(2, 1, 2, 2)
    torch.testing.assert_close(dead_zone_loss(0.25)(pred, y), torch.tensor([0.0, (0.25**2 + 0.35**2) / 4]))
    torch.testing.assert_close(dead_zone_loss(0.0)(pred, y), pred.pow(2).flatten(1).mean(1))
    with pytest.raises(InputError, match="dead-zone"):
        dead_zone_loss(-0.1)


def test_exception(relu_problem, small_vae):
    G, _, _, A, y = relu_problem
    with pytest.raises(InputError, match="NaN or inf"):
        csgm(G, torch.full_like(y, float("nan")), A, steps=1)
    with pytest.raises(InputError, match=r"shape \(6, 47\)"):
        csgm(G, y[:, :47], A, steps=1)
    with pytest.raises(InputError, match="operator expects images"):
        csgm(G, torch.zeros(2, 1, 8, 8), Identity((1, 8, 8)), steps=1)
    with pytest.raises(InputError, match="restarts"):
        csgm(G, y, A, restarts=0)
    with pytest.raises(InputError, match="needs a generator with an encoder"):
        csgm(G, y, A, init="encoder")
    with pytest.raises(InputError, match="needs a generator with split"):
        ilo(torch.nn.Linear(2, 2), y, A)
    with pytest.raises(InputError, match="non-negative relative radius"):
        ilo(small_vae, torch.rand(2, 1, 8, 8), radii=[-1.0, 0.1, 0.1])
    with pytest.raises(InputError, match="layers must be increasing"):
        ilo(small_vae, torch.rand(2, 1, 8, 8), layers=[2, 1])
    with pytest.raises(InputError, match="unknown inversion method"):
        invert(G, y, A, method="lbfgs")
    with pytest.raises(InputError, match="schedule"):
        csgm(G, y, A, steps=2, schedule="exp")
    with pytest.raises(InputError, match="prune_after"):
        csgm(G, y, A, steps=2, prune_after=-1)
    with pytest.raises(InputError, match="needs a generator with an encoder"):
        csgm(G, y, A, restarts=2, init="encoder+search")
    with pytest.raises(InputError, match="search_candidates"):
        csgm(G, y, A, restarts=3, init="search", search_candidates=2)


# ------------------------------------------------------------------------------- deep image prior

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
