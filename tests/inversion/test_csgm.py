"""CSGM (Bora et al. 2017): restarts, early stopping, pruning, search, warm starts, unrolling."""

import pytest
import torch

from manifold_defense.generators import VAE
from manifold_defense.inversion import (
    csgm,
    ilo,
    invert,
)
from manifold_defense.operators import (
    GaussianMeasurements,
    Identity,
    Nonlinear,
)
from manifold_defense.validation import InputError


def test_smoke_csgm_recovers_latents(relu_problem, rel):
    G, z, x, A, y = relu_problem
    res = csgm(G, y, A, steps=1500, lr=0.05, restarts=4, loss="sse", seed=0)
    assert res.z.shape == z.shape and res.x.shape == x.shape and res.history.shape == (1500, 6)
    assert float(rel(res.x, x).max()) < 1e-2
    assert bool((res.loss <= res.history[0] + 1e-12).all())  # descent lowered the objective
    assert int(res.generator_evals.min()) == 4 * 1501  # 4 restarts × (steps + final check)


def test_restarts_are_batched_and_best_is_kept(relu_problem):
    G, _, _, A, y = relu_problem
    one = csgm(G, y, A, steps=200, lr=0.05, restarts=1, seed=5, loss="sse")
    many = csgm(G, y, A, steps=200, lr=0.05, restarts=6, seed=5, loss="sse")
    # Restart 0 of the 6 starts where the single run starts; keeping the best can only help.
    assert bool((many.loss <= one.loss + 1e-9).all())


def test_early_stopping_saves_evaluations(relu_problem, rel):
    G, _, x, A, y = relu_problem
    full = csgm(G, y, A, steps=3000, lr=0.05, restarts=2, loss="sse")
    early = csgm(G, y, A, steps=3000, lr=0.05, restarts=2, loss="sse", tol=1e-4, patience=50)
    assert early.evals_per_sample < 0.7 * full.evals_per_sample
    assert float(rel(early.x, x).median()) < 0.05


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
