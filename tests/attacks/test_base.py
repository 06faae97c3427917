"""Attack.__call__: crafts and scores in eval mode and gives every submodule its own mode back."""

import pytest
import torch

from manifold_defense.attacks import BPDA, FGSM
from manifold_defense.attacks.base import FirstSuccess
from manifold_defense.classifiers import predict
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.validation import InputError

FAST = ProjectionConfig(steps=10, restarts=1, search_candidates=50, prune_after=0)


@pytest.fixture
def fresh_model(digits_classifier, digits_vae):
    # built as a user builds it: nn.Module starts in training mode, the zoo's classifier (with dropout) in eval
    digits_classifier.eval()
    return DefendedModel(digits_classifier, digits_vae, FAST)


@pytest.mark.parametrize("attack", [FGSM(), BPDA(norm="linf", steps=2, eot=2)], ids=["fgsm", "bpda_eot"])
def test_an_attack_leaves_each_submodule_in_its_own_mode(attack, fresh_model, digits_test):
    x, y = digits_test.images[:8], digits_test.labels[:8]
    assert fresh_model.training and not fresh_model.classifier.training
    attack(fresh_model, x, y, epsilon=0.3)
    assert fresh_model.training and not fresh_model.classifier.training  # dropout stays off
    with torch.no_grad():
        first, second = fresh_model(x), fresh_model(x)
    assert torch.equal(first, second)  # the deterministic defense still answers the same way


def test_success_is_scored_with_dropout_off(fresh_model, digits_test):
    # a classifier a user left in training mode: the attack judges the deterministic (eval) model, every time
    x, y = digits_test.images[:32], digits_test.labels[:32]
    fresh_model.train()
    runs = [FGSM()(fresh_model, x, y, epsilon=0.1).success for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert fresh_model.classifier.training  # and the user's mode comes back


def test_predict_keeps_submodule_modes(fresh_model, digits_test):
    predict(fresh_model, digits_test.images[:4])
    assert fresh_model.training and not fresh_model.classifier.training


def test_first_success_takes_exact_logits_only_when_reusing(digits_classifier):
    """Logits recorded as exact are a verdict; a check with its own scorer must never take them as one."""
    y = torch.zeros(3, dtype=torch.long)
    check = FirstSuccess(digits_classifier, y, prefilter=True)
    with pytest.raises(InputError, match="reuse"):
        check.record(torch.zeros(3, 10), exact=True)
