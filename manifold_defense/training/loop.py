"""The classifier training loop: seeded, resumable, standard or adversarial, one process or torchrun.

Every epoch ends with an atomic checkpoint (``train_epochs``); rerunning
the same call resumes after the last finished epoch. The adversary is a
``TrainingObjective`` (Madry PGD, on-manifold, the Robust
Manifold Defense).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.checkpoint import train_epochs
from manifold_defense.classifiers import Classifier, accuracy
from manifold_defense.training.guard import OverfitGuard
from manifold_defense.training.objectives import FastObjective, StandardObjective, TrainingObjective
from manifold_defense.utils import minibatches, seed_everything
from manifold_defense.validation import InputError, check_images, check_labels

__all__ = ["train_classifier", "random_shift"]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random integer offset in ``[-max_shift, max_shift]`` (zero fill), batched."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device) + offs[0, :, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device) + offs[1, :, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def train_classifier(
    model: Classifier,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    augment_shift: int = 0,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    objective: TrainingObjective | None = None,
    log_path: str | os.PathLike | None = None,
    overfit_guard: OverfitGuard | bool | None = None,
) -> list[dict[str, float]]:
    """Cross-entropy training with Adam (Defense-GAN: lr 1e-3, batch 128), standard or adversarial.

    ``schedule`` is 'cosine' (decay to 0 over ``epochs``; reaches the paper's accuracy in fewer
    epochs), 'cyclic' (per step, linearly from 0 up to ``lr`` at 2/5 of the epochs and back to 0 at the end:
    Wong et al. 2020's schedule for fast adversarial training) or 'constant'. With ``test`` the final test
    accuracy is stored as the model's quality.
    ``objective`` (a ``TrainingObjective``, default standard
    cross-entropy) plugs in an adversary: Madry PGD, on-manifold, the Robust Manifold Defense.
    ``log_path`` receives one JSON line of metrics per epoch.

    ``overfit_guard`` watches for catastrophic overfitting (``OverfitGuard``, Wong et al. 2020): APGD-CE accuracy on
    512 training images after each epoch, rollback to the best epoch on a drop of more than 0.2, the best epoch's
    weights at the end. ``None`` (default)
    turns it on for the FGSM objective (``FastObjective``, the one that overfits so) and off otherwise; ``True`` /
    ``False`` force it on / off (on needs an objective with ``epsilon`` and ``norm``); or pass a guard.

    Under ``torchrun`` (an initialised ``torch.distributed`` process group) the same call trains with
    DistributedDataParallel: a DistributedSampler shards each epoch, every rank takes
    ``batch_size / world_size`` samples per step (the global batch is unchanged), metrics are
    all-reduced, and only rank 0 writes the checkpoint and the log.
    """
    check_images(x_train, model.input_shape, name="x_train")
    check_labels(y_train, len(x_train), model.num_classes, name="y_train")
    if schedule not in ("cosine", "cyclic", "constant"):
        raise InputError(f"schedule must be 'cosine', 'cyclic' or 'constant', got {schedule!r}")
    objective = objective or StandardObjective()
    guard = _guard(overfit_guard, objective, x_train, y_train, seed)
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    x_train, y_train = x_train.to(device), y_train.to(device)
    dist = torch.distributed
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    if batch_size % world:
        raise InputError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedulers = {}
    if schedule == "cosine":
        schedulers["lr"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    def batches(epoch: int):
        if world == 1:
            return minibatches(len(x_train), batch_size, gen)
        sampler = torch.utils.data.DistributedSampler(range(len(x_train)), num_replicas=world, rank=rank,
                                                      shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler)).split(batch_size // world)

    def epoch_fn(epoch: int) -> dict[str, float]:
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss · n, correct, n
        extra: dict[str, float] = {}
        extra_n: dict[str, float] = {}
        order = list(batches(epoch))
        for i, idx in enumerate(order):
            if schedule == "cyclic":  # a function of the step alone, so a resumed run follows it exactly
                t = epoch + (i + 1) / len(order)
                for group in opt.param_groups:
                    group["lr"] = lr * float(np.interp(t, [0, 0.4 * epochs, epochs], [0, 1, 0]))
            idx = idx.to(device)
            xb, yb = random_shift(x_train[idx], augment_shift, gen), y_train[idx]
            loss, logits, metrics = objective(net, model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([float(loss.detach()) * len(idx), float((logits.argmax(1) == yb).sum()), len(idx)],
                                 dtype=torch.float64, device=device)
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + v * len(idx)
                extra_n[k] = extra_n.get(k, 0.0) + len(idx)
        if world > 1:
            dist.all_reduce(sums)
        out = {"loss": float(sums[0] / sums[2]), "train_acc": float(sums[1] / sums[2])}
        out.update({k: extra[k] / extra_n[k] for k in extra})  # this rank's means of the objective's extras
        if test is not None:
            out["test_acc"] = accuracy(model, *test)
        return out

    def finalize() -> dict[str, float]:
        return {"test_accuracy": accuracy(model, *test), "n_test": len(test[1])} if test is not None else {}

    config = {"trainer": "standard", "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "schedule": schedule, "augment_shift": augment_shift, "seed": seed, "n_train": len(x_train), "steps_per_epoch": steps_per_epoch}
    if schedule in ("cosine", "cyclic"):
        config["epochs"] = epochs  # the schedule depends on the total, so it is part of the configuration
    if objective.name != "standard":
        config.update({"trainer": "adversarial", **objective.config()})
    if world > 1:
        config["world_size"] = world
    if guard is not None:
        config["overfit_guard"] = guard.config()
    return train_epochs(
        path=path, modules={"model": model}, optimizers={"adam": opt}, schedulers=schedulers, epochs=epochs,
        epoch_fn=epoch_fn, config=config, metadata=metadata, generator=gen, finalize=finalize,
        desc=f"train {type(model).__name__}", progress=progress, writer=rank == 0, log_path=log_path, guard=guard,
    )


def _guard(spec: OverfitGuard | bool | None, objective: TrainingObjective, x: torch.Tensor, y: torch.Tensor,
           seed: int) -> OverfitGuard | None:
    if isinstance(spec, OverfitGuard) or spec is False:
        return spec or None
    if spec not in (None, True):
        raise InputError(f"overfit_guard must be an OverfitGuard, True, False or None, got {type(spec).__name__}")
    if spec is None and objective.name != FastObjective.name:
        return None
    config = objective.config()
    if "epsilon" not in config or config.get("norm") not in ("l2", "linf"):
        raise InputError(f"overfit_guard=True needs a pixel-space adversary with epsilon and norm; the "
                         f"{objective.name!r} objective has none")
    return OverfitGuard.from_training_data(x, y, seed=seed, epsilon=config["epsilon"], norm=config["norm"])
