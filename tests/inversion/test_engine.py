"""The descent engine: step rules, loss terms, per-row stopping, ``until``, ``keep``, EOT and unrolling."""

from __future__ import annotations

import pytest
import torch

from manifold_defense.inversion import (
    DataTerm,
    LatentPrior,
    StepRule,
    ball_projection,
    descend,
    get_step_rule,
)
from manifold_defense.validation import InputError


def _quadratic(target: torch.Tensor):
    """Data term ‖v − target[rows]‖²: the minimiser is the target (decode = identity)."""
    return DataTerm(target, loss="sum")


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


@pytest.fixture
def target(dtype, device) -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)


class TestSmoke:
    @pytest.mark.parametrize("rule, lr", [("adam", 0.1), ("sgd", 0.05), ("gd", 0.2), ("l2", 0.05)])
    def test_rules_minimise_a_quadratic(self, rule, lr, target):
        start = torch.zeros_like(target)
        res = descend(start, _identity, _quadratic(target), steps=300, lr=lr, step_rule=rule,
                      schedule="cosine" if rule == "l2" else "constant")
        assert res.variables.dtype == target.dtype and res.variables.device.type == target.device.type
        torch.testing.assert_close(res.variables, target, atol=2e-2, rtol=0)
        assert bool((res.objective <= res.history[0] + 1e-12).all())
        assert res.history.shape == (300, 5) and bool((res.history[1:] <= res.history[:-1]).all())

    def test_sign_step_is_linf_steepest_descent(self, target):
        res = descend(torch.zeros_like(target), _identity, _quadratic(target), steps=1, lr=0.5, step_rule="sign",
                      keep="last")
        torch.testing.assert_close(res.variables, 0.5 * target.sign())
        assert bool(res.objective.isnan().all())  # keep='last' does not evaluate the final iterate

    def test_penalties_add_to_the_data_term(self, target):
        res = descend(torch.zeros_like(target), _identity, _quadratic(target), penalties=[LatentPrior(1.0)],
                      steps=400, lr=0.05)
        # argmin ‖v − t‖² + ‖v‖² = t / 2; the data term is reported apart from the objective
        torch.testing.assert_close(res.variables, target / 2, atol=1e-3, rtol=0)
        torch.testing.assert_close(res.data, (res.variables - target).pow(2).sum(1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.objective, res.data + res.variables.pow(2).sum(1), atol=1e-5, rtol=1e-4)

    def test_projection_keeps_rows_feasible(self, target):
        center = torch.zeros_like(target)
        res = descend(center.clone(), _identity, _quadratic(target * 10), steps=50, lr=0.1,
                      project=ball_projection(center, 0.3, "linf", box=None), step_rule="sign")
        assert float(res.variables.abs().max()) <= 0.3 + 1e-6
        torch.testing.assert_close(res.variables, 0.3 * target.sign(), atol=1e-6, rtol=0)

    def test_early_stopping_is_per_row(self):
        # row 0 starts at its optimum and stops; row 1 keeps going and costs more evaluations
        t = torch.tensor([[0.0], [5.0]])
        res = descend(torch.zeros(2, 1), _identity, _quadratic(t), steps=200, lr=0.1, tol=1e-3, patience=5)
        assert int(res.evaluations[0]) < int(res.evaluations[1])
        assert int(res.stopped_at[0]) <= 6 and int(res.stopped_at[1]) > 20

    def test_stop_at_the_data_term(self):
        t = torch.tensor([[3.0], [3.0]])
        res = descend(torch.zeros(2, 1), _identity, _quadratic(t), steps=500, lr=0.05, step_rule="gd",
                      stop_at=torch.tensor([1.0, 0.01]))
        assert bool(res.reached.all()) and bool((res.data <= torch.tensor([1.0, 0.01])).all())
        assert int(res.stopped_at[0]) < int(res.stopped_at[1]) < 500

    def test_until_keeps_the_first_iterate_that_meets_it(self):
        # gradient descent on (v − 10)² walks past 3, the iterate where ``until`` first holds is the one kept,
        # even though later iterates have a lower objective
        t = torch.tensor([[10.0]])
        res = descend(torch.zeros(1, 1), _identity, _quadratic(t), steps=100, lr=0.25, step_rule="sign",
                      until=lambda x, v, rows: v[:, 0] >= 3.0)
        assert bool(res.reached[0]) and float(res.variables[0, 0]) == 3.0
        assert int(res.stopped_at[0]) == 13  # 12 steps of 0.25 reach 3.0, scored at the 13th evaluation
        assert int(res.evaluations[0]) == 13

    def test_until_on_the_final_iterate_and_without_steps(self):
        t = torch.tensor([[1.0], [1.0]])
        hit_last = descend(torch.zeros(2, 1), _identity, _quadratic(t), steps=2, lr=0.5, step_rule="sign",
                           until=lambda x, v, rows: v[:, 0] >= 1.0)
        assert bool(hit_last.reached.all())
        hit_start = descend(torch.ones(2, 1), _identity, _quadratic(t * 5), steps=0, lr=0.1,
                            until=lambda x, v, rows: v[:, 0] >= 1.0)
        assert bool(hit_start.reached.all()) and int(hit_start.evaluations.max()) == 1

    def test_eot_averages_a_random_objective(self):
        gen = torch.Generator().manual_seed(0)

        def noisy(x, v, rows):  # E[(v − 2 − ξ)²] with ξ ~ N(0, 1): minimum at v = 2
            return (v - 2 - torch.randn(v.shape, generator=gen)).pow(2).sum(1)

        one = descend(torch.zeros(64, 1), _identity, noisy, steps=60, lr=0.1, step_rule="gd", keep="last")
        many = descend(torch.zeros(64, 1), _identity, noisy, steps=60, lr=0.1, step_rule="gd", keep="last", eot=16)
        assert float((many.variables - 2).abs().mean()) < 0.5 * float((one.variables - 2).abs().mean())
        assert int(many.evaluations[0]) == 16 * 60

    def test_negation_flips_to_the_better_sign(self):
        t = torch.tensor([[-4.0, -4.0]])
        res = descend(torch.ones(1, 2), _identity, _quadratic(t), steps=1, lr=0.0, step_rule="gd", negation=True)
        torch.testing.assert_close(res.variables, -torch.ones(1, 2))
        assert int(res.evaluations[0]) == 3  # the negation check, the step, the last iterate

    def test_divergence_is_flagged_and_the_last_finite_iterate_kept(self):
        def blows_up(x, v, rows):
            return torch.where(v[:, 0] > 0.5, torch.full_like(v[:, 0], float("nan")), (v[:, 0] - 2) ** 2)

        res = descend(torch.zeros(1, 1), _identity, blows_up, steps=20, lr=0.3, step_rule="sign")
        assert bool(res.diverged[0]) and bool(torch.isfinite(res.variables).all()) and float(res.variables) <= 0.5


class TestGradcheck:
    def test_unrolled_descent_is_differentiable(self):
        t = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)

        def f(t):
            return descend(torch.zeros(3, 2, dtype=torch.float64), _identity, DataTerm(t, loss="sum"), steps=5,
                           lr=0.1, step_rule="adam", differentiable=True).variables

        assert torch.autograd.gradcheck(f, (t,), eps=1e-6, atol=1e-6)


class TestException:
    def test_bad_arguments(self):
        t = torch.zeros(2, 1)
        with pytest.raises(InputError, match="steps"):
            descend(t, _identity, _quadratic(t), steps=-1, lr=0.1)
        with pytest.raises(InputError, match="eot"):
            descend(t, _identity, _quadratic(t), steps=1, lr=0.1, eot=0)
        with pytest.raises(InputError, match="keep"):
            descend(t, _identity, _quadratic(t), steps=1, lr=0.1, keep="first")
        with pytest.raises(InputError, match="unknown step rule"):
            descend(t, _identity, _quadratic(t), steps=1, lr=0.1, step_rule="rmsprop")
        with pytest.raises(InputError, match="schedule"):
            descend(t, _identity, _quadratic(t), steps=1, lr=0.1, schedule="exp")
        with pytest.raises(InputError, match="momentum"):
            get_step_rule("sgd", momentum=1.5)

    def test_a_mask_needs_a_squared_error_loss(self):
        with pytest.raises(InputError, match="squared-error"):
            DataTerm(torch.zeros(2, 3), loss=lambda p, y: (p - y).abs().sum(1), mask=torch.ones(2, 3))

    def test_a_custom_rule_plugs_in(self):
        class Halve(StepRule):
            """Moves each row halfway to zero, whatever the gradient."""

            def update(self, v, g, lr, state, t, *, rows=None, differentiable=False):
                return v / 2, state

        res = descend(torch.full((2, 1), 8.0), _identity, _quadratic(torch.zeros(2, 1)), steps=3, lr=1.0,
                      step_rule=Halve(), keep="last")
        torch.testing.assert_close(res.variables, torch.ones(2, 1))


@pytest.mark.parametrize("loss", ["mse", "sum", "sse"])
def test_masked_data_term_counts_only_kept_entries(loss):
    pred, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    got = DataTerm(y, loss=loss, mask=mask)(pred, pred, torch.tensor([0]))
    want = {"mse": (1 + 9) / 2, "sum": 10.0, "sse": 5.0}[loss]
    torch.testing.assert_close(got, torch.tensor([want]))
