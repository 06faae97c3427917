import pytest

from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import ATTACKS, AttackBudget, build_attack, parse_attack
from manifold_defense.validation import InputError


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_named_attack_breaks_the_undefended_classifier(name, digits_classifier, digits_vae, digits_test):
    x, y = digits_test.images[:24], digits_test.labels[:24]
    threat, eps, _, _ = ATTACKS[name]
    big = {"linf": 0.3, "l2": 3.0, "on_manifold": 2.0}[threat]
    spec = build_attack(name, [big], classifier=digits_classifier, generator=digits_vae, budget=AttackBudget.quick())
    assert spec.threat == threat and spec.epsilons == [big]
    res = spec.attack(digits_classifier, x, y, epsilon=big)  # norms are asserted <= eps inside
    clean = float((digits_classifier(x).argmax(1) == y).float().mean())
    assert res.robust_accuracy < clean - 0.25, f"{name}: {res.robust_accuracy:.2f} vs clean {clean:.2f}"


def test_surrogate_is_used_and_reported(digits_classifier, digits_vae, digits_test):
    x, y = digits_test.images[:16], digits_test.labels[:16]
    model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=80, restarts=3)).eval()
    surrogate = ProjectionConfig(steps=20, restarts=1)
    spec = build_attack("pgd_linf", [0.3], surrogate=surrogate, budget=AttackBudget.quick())
    spec.attack(model, x, y, epsilon=0.3)
    assert "surrogate" in spec.attack.surrogate_description and "steps=20" in spec.attack.surrogate_description


def test_parse_attack():
    assert parse_attack("pgd_linf:0.1,0.3") == ("pgd_linf", [0.1, 0.3])
    assert parse_attack("on_manifold") == ("on_manifold", None)


def test_exception(digits_classifier):
    with pytest.raises(InputError, match="unknown attack"):
        build_attack("pgd_l3")
    with pytest.raises(InputError, match="needs the undefended classifier"):
        build_attack("fgsm_transfer")
    with pytest.raises(InputError, match="needs a generator"):
        build_attack("on_manifold")
    with pytest.raises(InputError, match="non-negative"):
        build_attack("pgd_linf", [-0.1])
    with pytest.raises(InputError, match="parse"):
        parse_attack("pgd_linf:abc")
