import pytest
import torch

from manifold_defense.robustness_adapter import madry_pgd, madry_step
from manifold_defense.validation import InputError


@pytest.mark.parametrize("norm, eps", [("l2", 1.5), ("linf", 0.2)])
def test_madry_pgd_breaks_undefended_within_budget(norm, eps, digits_classifier, digits_test):
    x, y = digits_test.images[:48], digits_test.labels[:48]
    adv = madry_pgd(digits_classifier, x, y, norm=norm, epsilon=eps, steps=10)
    d = (adv - x).flatten(1)
    norms = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    assert bool((norms <= eps + 1e-5).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        clean = (digits_classifier(x).argmax(1) == y).float().mean()
        robust = (digits_classifier(adv).argmax(1) == y).float().mean()
    assert robust < clean - 0.4


def test_exception():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="norm"):
        madry_step("l1", x, 1.0, 0.1)
    with pytest.raises(InputError, match="epsilon"):
        madry_step("l2", x, 0.0, 0.1)
