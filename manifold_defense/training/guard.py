"""A guard against catastrophic overfitting in fast adversarial training (Wong, Rice, Kolter 2020).

FGSM training ("Fast is better than free", ICLR 2020, §5.3) can lose all robustness within an epoch while its
accuracy on its own FGSM examples keeps rising: the training log shows nothing. Wong et al. detect it by PGD
accuracy on a training batch and stop at the first drop of more than 0.2. ``OverfitGuard`` checks after each epoch
(``train_epochs`` calls it, its state goes into every checkpoint, so a resumed run decides as an uninterrupted one),
rolls the model and its optimiser back to the best epoch on a collapse and lets the schedule go on; the run ends on
the best epoch's weights. Its attack is APGD-CE (Croce & Hein 2020), not fixed-step PGD: on an MNIST model that had
overfit, 10-step PGD still read .78 where APGD-CE found .26 (512 training images).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
from torch import nn

from manifold_defense.training.objectives import _EvalMode
from manifold_defense.utils import tensor_digest
from manifold_defense.validation import InputError, check_labels

__all__ = ["OverfitGuard"]


class OverfitGuard:
    """APGD-CE accuracy of ``modules[module]`` on the fixed batch ``(x, y)`` after each epoch; a drop of more than
    ``tolerance`` below the best epoch's restores that epoch's weights and optimiser state (Wong et al. 2020's
    early stopping, with the schedule going on); the ``max_rollbacks + 1``-th collapse ends training, and a run ends
    on its best epoch's weights (Rice et al. 2020's early stopping on robust accuracy).

    The attack: APGD-CE (pyautoattack through ``attacks.AutoAttack``, one restart, ``steps`` iterations, seeded by
    ``seed``; the global random state is left as it was). Use training images (``from_training_data``): the guard
    selects weights, so test images would leak into the evaluation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str = "linf", steps: int = 25,
                 tolerance: float = 0.2, max_rollbacks: int = 2, seed: int = 0, module: str = "model") -> None:
        if norm not in ("l2", "linf"):
            raise InputError(f"norm must be 'l2' or 'linf', got {norm!r}")
        if not epsilon > 0 or steps < 1:
            raise InputError(f"the guard's attack needs epsilon > 0 and steps >= 1, got {epsilon}, {steps}")
        if not 0 < tolerance < 1 or max_rollbacks < 0:
            raise InputError(f"tolerance must be in (0, 1) and max_rollbacks >= 0, got {tolerance}, {max_rollbacks}")
        if x.ndim != 4 or len(x) == 0:
            raise InputError(f"the guard's images must be a non-empty (N, C, H, W) batch, got shape {tuple(x.shape)}")
        check_labels(y, len(x), None, name="y")
        self.x, self.y = x.detach(), y.detach()
        self.norm, self.epsilon, self.steps = norm, float(epsilon), int(steps)
        self.tolerance, self.max_rollbacks, self.seed, self.module = float(tolerance), int(max_rollbacks), seed, module
        self.best, self.best_epoch, self.rollbacks, self.stopped = -math.inf, 0, 0, False
        self.snapshot: dict[str, Any] | None = None

    @classmethod
    def from_training_data(cls, x: torch.Tensor, y: torch.Tensor, *, n: int = 512, seed: int = 0,
                           **kwargs: Any) -> "OverfitGuard":
        """A guard on ``n`` training images drawn with ``seed`` (all of them if there are fewer)."""
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return cls(x[idx.to(x.device)], y[idx.to(y.device)], seed=seed, **kwargs)

    def config(self) -> dict[str, Any]:
        """What decides the guard's choices (stored with the training configuration)."""
        return {"attack": "apgd-ce", "norm": self.norm, "epsilon": self.epsilon, "steps": self.steps,
                "tolerance": self.tolerance, "max_rollbacks": self.max_rollbacks, "seed": self.seed,
                "n": len(self.x), "data": tensor_digest(self.x.cpu())[:16]}

    def robust_accuracy(self, model: nn.Module) -> float:
        """APGD-CE accuracy of ``model`` (in eval mode) on the guard's batch, with the guard's own seed."""
        from manifold_defense.attacks import AutoAttack

        device = next(model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        attack = AutoAttack(norm=self.norm, version="custom", attacks=["apgd-ce"], n_iter=self.steps, seed=self.seed,
                            batch_size=len(x))
        with _EvalMode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            adv = attack.run(model, x, y, self.epsilon).adversarial
            with torch.inference_mode():
                return float((model(adv).argmax(1) == y).float().mean())

    def after_epoch(self, epoch: int, modules: Mapping[str, nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, float]:
        """Score the finished epoch ``epoch`` (0-based); keep a copy of the best, roll back on a collapse.
        Returns the metrics for the epoch's history: ``guard_robust_acc`` and, on a rollback, ``rolled_back_to``."""
        acc = self.robust_accuracy(modules[self.module])
        out = {"guard_robust_acc": acc}
        if acc >= self.best:
            self.best, self.best_epoch = acc, epoch + 1
            self.snapshot = {"modules": {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
                                         for k, m in modules.items()},
                             "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in optimizers.items()}}
        elif acc < self.best - self.tolerance:
            for k, m in modules.items():
                m.load_state_dict(self.snapshot["modules"][k])
            for k, o in optimizers.items():
                o.load_state_dict(self.snapshot["optimizers"][k])
            self.rollbacks += 1
            self.stopped = self.rollbacks > self.max_rollbacks
            out["rolled_back_to"] = float(self.best_epoch)
        return out

    def finish(self, modules: Mapping[str, nn.Module]) -> None:
        """At the end of training: the best epoch's weights (the last epoch's when it scored best)."""
        if self.snapshot is not None:
            for k, m in modules.items():
                m.load_state_dict(self.snapshot["modules"][k])

    def state_dict(self) -> dict[str, Any]:
        """The guard's resumable state (best score and epoch, rollbacks, the best epoch's weights)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "rollbacks": self.rollbacks,
                "stopped": self.stopped, "snapshot": self.snapshot}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` saved (a resumed run)."""
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.rollbacks, self.stopped, self.snapshot = int(state["rollbacks"]), bool(state["stopped"]), state["snapshot"]

    def summary(self) -> dict[str, Any]:
        """For the checkpoint's metadata: the best epoch (whose weights a finished run holds), its APGD-CE accuracy,
        the rollbacks, whether training stopped early."""
        return {"best_epoch": self.best_epoch, "best_robust_acc": self.best, "rollbacks": self.rollbacks,
                "stopped_early": self.stopped}
