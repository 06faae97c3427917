"""Subgradient descent with negation (Hand & Voroninski 2018)."""


from manifold_defense.inversion import (
    subgradient,
)


def test_subgradient_with_negation(relu_problem, rel):
    G, z, x, A, y = relu_problem
    res = subgradient(G, y, A, steps=3000, lr=0.5, restarts=3, seed=0)
    assert float((rel(res.x, x) < 1e-3).float().mean()) >= 5 / 6
    res_start_negative = subgradient(G, y, A, steps=1, lr=0.0, init_scale=1.0, seed=0)
    assert res_start_negative.generator_evals.min() >= 2  # the negation check costs a pass
