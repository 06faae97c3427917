import pytest

from manifold_defense.attacks import AutoAttack, CarliniWagnerL2
from manifold_defense.validation import InputError


def test_carlini_wagner_breaks_undefended(digits_classifier, digits_test):
    x, y = digits_test.images[:32], digits_test.labels[:32]
    res = CarliniWagnerL2(binary_search_steps=4, steps=50, stepsize=0.05, initial_const=0.1)(digits_classifier, x, y,
                                                                                          epsilon=2.0)
    assert bool((res.norms <= 2.0 + 1e-5).all())
    assert res.success_rate >= 0.8


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.5)])
def test_autoattack_breaks_undefended(norm, eps, digits_classifier, digits_test):
    x, y = digits_test.images[:32], digits_test.labels[:32]
    res = AutoAttack(norm=norm, version="custom", attacks=["apgd-ce"], n_iter=20)(digits_classifier, x, y,
                                                                               epsilon=eps)
    assert bool((res.norms <= eps + 1e-5).all())
    assert res.success_rate >= 0.7


def test_exception():
    with pytest.raises(InputError, match="attacks"):
        AutoAttack(version="custom")
    with pytest.raises(InputError, match="version"):
        AutoAttack(version="lite")
    with pytest.raises(InputError, match="steps"):
        CarliniWagnerL2(steps=0)
