"""``OverfitGuard``: a run made to collapse is rolled back to its best epoch, resumably; bad settings refused."""

import pytest
import torch

from manifold_defense import data
from manifold_defense.checkpoint import load_checkpoint
from manifold_defense.classifiers import DigitsCNN
from manifold_defense.training import (FastObjective, MadryObjective, OverfitGuard, StandardObjective,
                                       train_classifier)
from manifold_defense.validation import InputError

EPOCH = 8  # steps per epoch: 512 images, batch 64


@pytest.fixture(scope="module")
def digits_512():
    train = data.load("digits", "train")
    return train.images[:512], train.labels[:512]


class _Sabotaged:
    """Standard training, except that steps ``first..last`` (1-based calls) learn shifted labels: the model
    forgets the true classes, as a catastrophically overfit model forgets PGD."""

    def __init__(self, first, last=10**9):
        self.inner, self.first, self.last, self.calls = StandardObjective(), first, last, 0
        self.name, self.config = "sabotaged", lambda: {"objective": "sabotaged", "first": first, "last": last}

    def __call__(self, model, bare, x, y):
        self.calls += 1
        if self.first <= self.calls <= self.last:
            y = (y + 1) % 10
        return self.inner(model, bare, x, y)


class _Killed(Exception):
    pass


class _DiesAt(_Sabotaged):
    def __init__(self, n, *args):
        super().__init__(*args)
        self.n = n

    def __call__(self, *args):
        if self.calls + 1 == self.n:
            raise _Killed
        return super().__call__(*args)


def _guard(x, y, **kw):
    # ε = 0.01 over 2 steps: robust accuracy ≈ clean accuracy, so the sabotage collapses it for certain
    return OverfitGuard.from_training_data(x, y, epsilon=0.01, steps=2, **kw)


def _train(model, x, y, objective, guard, epochs, path=None):
    return train_classifier(model, x, y, objective=objective, overfit_guard=guard, epochs=epochs, batch_size=64,
                            lr=3e-3, schedule="constant", seed=0, path=path, progress=False)


class TestRollback:
    def test_collapse_ends_on_the_best_epochs_weights(self, digits_512, tmp_path):
        """Sabotaged from epoch 3 on with no rollback allowed: training stops after epoch 3 with exactly the weights
        of a 2-epoch run (the guard's attack leaves the random state alone), and says so in its checkpoint."""
        x, y = digits_512
        torch.manual_seed(0)
        ref = DigitsCNN()
        _train(ref, x, y, StandardObjective(), False, 2)
        torch.manual_seed(0)
        model, guard = DigitsCNN(), _guard(x, y, max_rollbacks=0)
        hist = _train(model, x, y, _Sabotaged(2 * EPOCH + 1), guard, 5, tmp_path / "m.pt")
        assert len(hist) == 3 and hist[2]["rolled_back_to"] == 2
        assert hist[1]["guard_robust_acc"] - hist[2]["guard_robust_acc"] > 0.2
        for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
            torch.testing.assert_close(a, b)
        meta = load_checkpoint(tmp_path / "m.pt")["metadata"]
        assert meta["guard"] == {"best_epoch": 2, "best_robust_acc": hist[1]["guard_robust_acc"], "rollbacks": 1,
                                 "stopped_early": True}
        assert meta["config"]["overfit_guard"]["max_rollbacks"] == 0
        # rerunning the finished call trains nothing more
        assert _train(DigitsCNN(), x, y, _Sabotaged(2 * EPOCH + 1), _guard(x, y, max_rollbacks=0), 5,
                      tmp_path / "m.pt") == hist

    def test_a_worse_last_epoch_is_not_kept(self, digits_512, tmp_path):
        """A drop within the tolerance rolls nothing back, but the run still ends on the best epoch's weights."""
        x, y = digits_512
        torch.manual_seed(0)
        ref = DigitsCNN()
        _train(ref, x, y, StandardObjective(), False, 2)
        torch.manual_seed(0)
        model = DigitsCNN()
        hist = _train(model, x, y, _Sabotaged(2 * EPOCH + 1), _guard(x, y, tolerance=0.99), 3)
        assert "rolled_back_to" not in hist[2] and hist[2]["guard_robust_acc"] < hist[1]["guard_robust_acc"]
        for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
            torch.testing.assert_close(a, b)

    def test_rollback_then_training_goes_on_and_resumes_after_a_kill(self, digits_512, tmp_path):
        """A collapse in epoch 3 only: rolled back, epoch 4 trains from the best weights and recovers; a run killed in
        epoch 4 and rerun ends with the uninterrupted run's weights (the guard's snapshot is in the checkpoint)."""
        x, y = digits_512
        sabotage = (2 * EPOCH + 1, 3 * EPOCH)
        torch.manual_seed(0)
        ref = DigitsCNN()
        hist = _train(ref, x, y, _Sabotaged(*sabotage), _guard(x, y), 4, tmp_path / "ref.pt")
        assert [h.get("rolled_back_to") for h in hist] == [None, None, 2.0, None]
        assert hist[3]["guard_robust_acc"] > hist[2]["guard_robust_acc"] + 0.2
        torch.manual_seed(0)
        with pytest.raises(_Killed):
            _train(DigitsCNN(), x, y, _DiesAt(3 * EPOCH + 3, *sabotage), _guard(x, y), 4, tmp_path / "run.pt")
        torch.manual_seed(1)
        resumed = DigitsCNN()
        resumed_objective = _Sabotaged(*sabotage)
        resumed_objective.calls = 3 * EPOCH  # the objective's own counter is the test's, not the checkpoint's
        again = _train(resumed, x, y, resumed_objective, _guard(x, y), 4, tmp_path / "run.pt")
        assert [h["guard_robust_acc"] for h in again] == pytest.approx([h["guard_robust_acc"] for h in hist], abs=1e-6)
        for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert load_checkpoint(tmp_path / "run.pt")["metadata"]["guard"]["rollbacks"] == 1


class TestDefault:
    def test_on_for_fgsm_training_off_for_pgd(self, digits_512, tmp_path):
        x, y = digits_512
        for objective, on in [(FastObjective(epsilon=0.1), True), (MadryObjective(epsilon=0.5, steps=1), False)]:
            path = tmp_path / f"{objective.name}.pt"
            hist = train_classifier(DigitsCNN(), x, y, objective=objective, epochs=1, batch_size=256, path=path,
                                    progress=False)
            assert ("guard_robust_acc" in hist[0]) is on
            assert ("overfit_guard" in load_checkpoint(path)["metadata"]["config"]) is on


class TestException:
    @pytest.mark.parametrize("kw, match", [({"epsilon": 0.0}, "epsilon > 0"), ({"epsilon": 0.3, "steps": 0}, "steps"),
                                           ({"epsilon": 0.3, "tolerance": 1.5}, "tolerance"),
                                           ({"epsilon": 0.3, "max_rollbacks": -1}, "max_rollbacks"),
                                           ({"epsilon": 0.3, "norm": "l3"}, "norm")])
    def test_bad_settings(self, digits_512, kw, match):
        with pytest.raises(InputError, match=match):
            OverfitGuard(*digits_512, **kw)

    def test_mismatched_labels(self, digits_512):
        x, y = digits_512
        with pytest.raises(InputError, match="shape"):
            OverfitGuard(x, y[:10], epsilon=0.3)

    @pytest.mark.parametrize("spec, match", [(True, "no"), ("yes", "must be an OverfitGuard")])
    def test_guard_without_an_adversary(self, digits_512, spec, match, tmp_path):
        with pytest.raises(InputError, match=match):
            train_classifier(DigitsCNN(), *digits_512, overfit_guard=spec, epochs=1, path=tmp_path / "m.pt",
                             progress=False)
        assert not (tmp_path / "m.pt").exists()
