"""The registry of named attacks: every entry attacks, budgets are honoured, unknown names are errors."""

from dataclasses import replace

import pytest

from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import ATTACKS, AttackBudget, build_attack, parse_attack
from manifold_defense.validation import InputError


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_named_attack_breaks_the_undefended_classifier(name, digits_classifier, digits_vae, digits_class_vaes,
                                                             digits_test):
    x, y = digits_test.images[:24], digits_test.labels[:24]
    threat = ATTACKS[name].threat
    # the class-conditional ones: a latent ℓ∞ ball over most of each class's 4-d prior, an image ℓ2 pair distance
    big = {"linf": 0.3, "l2": 3.0, "on_manifold": 2.0, "on_manifold_cc": 5.0, "on_manifold_cc_l2": 2.0}[threat]
    gen = digits_class_vaes if threat.startswith("on_manifold_cc") else digits_vae
    # a surrogate transfer attacks a defended model through a cheaper projection of it
    surrogate = ProjectionConfig(steps=10, restarts=1) if "surrogate" in ATTACKS[name].needs else None
    model = digits_classifier if surrogate is None else \
        DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=30, restarts=2)).eval()
    spec = build_attack(name, [big], classifier=digits_classifier, generator=gen, surrogate=surrogate,
                        budget=AttackBudget.quick())
    assert spec.threat == threat and spec.epsilons == [big]
    res = spec.attack(model, x, y, epsilon=big)  # norms are asserted <= eps inside
    clean = float((model(x).argmax(1) == y).float().mean())
    assert res.robust_accuracy < clean - 0.25, f"{name}: {res.robust_accuracy:.2f} vs clean {clean:.2f}"


def test_surrogate_is_used_and_reported(digits_classifier, digits_vae, digits_test):
    x, y = digits_test.images[:16], digits_test.labels[:16]
    model = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=80, restarts=3)).eval()
    surrogate = ProjectionConfig(steps=20, restarts=1)
    spec = build_attack("pgd_linf", [0.3], surrogate=surrogate, budget=AttackBudget.quick())
    res = spec.attack(model, x, y, epsilon=0.3)
    assert "surrogate" in res.crafted_on and "steps=20" in res.crafted_on


def test_parse_attack():
    assert parse_attack("pgd_linf:0.1,0.3") == ("pgd_linf", [0.1, 0.3])
    assert parse_attack("on_manifold") == ("on_manifold", None)


def test_exception(digits_classifier):
    with pytest.raises(InputError, match="unknown attack"):
        build_attack("pgd_l3")
    with pytest.raises(InputError, match="needs classifier="):
        build_attack("fgsm_transfer")
    with pytest.raises(InputError, match="needs generator="):
        build_attack("on_manifold")
    with pytest.raises(InputError, match="unknown attack"):
        parse_attack("cw_l3:1.0")
    with pytest.raises(InputError, match="budgets must be > 0"):
        AttackBudget(pgd_steps=0)
    with pytest.raises(InputError, match="non-negative"):
        build_attack("pgd_linf", [-0.1])
    with pytest.raises(InputError, match="parse"):
        parse_attack("pgd_linf:abc")


def test_budgets_reach_the_attacks(digits_vae):
    b = AttackBudget(pgd_steps=7, eot=3, restarts=2, on_manifold_steps=9, on_manifold_stepsize=0.2,
                     overpowered_steps=11, overpowered_rounds=1, latent_steps=13, latent_restarts=3)
    pgd = build_attack("pgd_l2", [1.0], budget=b).attack
    assert (pgd.pgd.steps, pgd.pgd.eot, pgd.pgd.restarts, pgd.norm) == (7, 3, 2, "l2")
    om = build_attack("on_manifold", generator=digits_vae, budget=b).attack
    assert (om.steps, om.latent_stepsize) == (9, 0.2)
    op = build_attack("overpowered", generator=digits_vae, budget=b).attack
    assert (op.steps, op.rounds) == (11, 1)
    lr = build_attack("latent_reparam_linf", generator=digits_vae, budget=b).attack
    assert (lr.steps, lr.restarts, lr.norm) == (13, 3, "linf")
    rtp = build_attack("range_target_pgd_linf", generator=digits_vae, budget=replace(b, range_restarts=5)).attack
    assert (rtp.range_target.restarts, rtp.range_target.steps, rtp.pgd.pgd.steps, rtp.pgd.pgd.restarts,
            rtp.pgd.range_restarts, rtp.target_starts) == (b.range_targets, 13, 7, 2, 5, 5)
    assert build_attack("pgd_linf", budget=b, label="mine").name == "mine"
