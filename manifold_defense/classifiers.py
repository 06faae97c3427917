"""Classifiers: the Defense-GAN MNIST models A–D (Samangouei et al., ICLR 2018), a small CNN for the
8×8 digits, and a seeded, resumable trainer.

Every classifier takes images in [0, 1] of shape ``input_shape`` and returns logits over
``num_classes`` classes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.checkpoint import register_architecture, train_epochs
from manifold_defense.utils import minibatches, seed_everything
from manifold_defense.validation import InputError, check_images, check_labels

__all__ = [
    "Classifier",
    "DefenseGANClassifier",
    "DigitsCNN",
    "train_classifier",
    "accuracy",
    "predict",
]


class Classifier(nn.Module):
    """Base class: logits from images of shape ``input_shape``; the shape is checked on every call."""

    input_shape: tuple[int, int, int]
    num_classes: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            check_images(x, self.input_shape, bounds=None)
        return self.net(x)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@register_architecture("defensegan-classifier")
class DefenseGANClassifier(Classifier):
    """Defense-GAN's MNIST classifiers; ``model`` is one of 'A', 'B', 'C', 'D'.

    A: conv64 5×5 → conv64 5×5 s2 → dropout .25 → FC128 → dropout .5 → FC10.
    B: dropout .2 → conv64 8×8 s2 → conv128 6×6 s2 → conv128 5×5 → dropout .5 → FC10.
    C: conv128 3×3 → conv64 5×5 s2 → dropout .25 → FC128 → dropout .5 → FC10.
    D: FC200 → dropout .5 → FC200 → FC10.
    """

    def __init__(self, model: str = "A", input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        model = model.upper()
        if model not in "ABCD" or len(model) != 1:
            raise ValueError(f"model must be one of A, B, C, D, got {model!r}")
        self.config = {"model": model, "input_shape": list(input_shape), "num_classes": int(num_classes)}
        self.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        c, h, w = self.input_shape
        if model == "A":
            s = _conv_out(_conv_out(h, 5, 1, 0), 5, 2, 0)
            t = _conv_out(_conv_out(w, 5, 1, 0), 5, 2, 0)
            layers = [nn.Conv2d(c, 64, 5), nn.ReLU(), nn.Conv2d(64, 64, 5, stride=2), nn.ReLU(), nn.Dropout(0.25),
                      nn.Flatten(), nn.Linear(64 * s * t, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes)]
        elif model == "B":
            s = _conv_out(_conv_out(_conv_out(h, 8, 2, 3), 6, 2, 0), 5, 1, 0)
            t = _conv_out(_conv_out(_conv_out(w, 8, 2, 3), 6, 2, 0), 5, 1, 0)
            layers = [nn.Dropout(0.2), nn.Conv2d(c, 64, 8, stride=2, padding=3), nn.ReLU(),
                      nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(), nn.Conv2d(128, 128, 5), nn.ReLU(),
                      nn.Dropout(0.5), nn.Flatten(), nn.Linear(128 * s * t, num_classes)]
        elif model == "C":
            s = _conv_out(_conv_out(h, 3, 1, 0), 5, 2, 0)
            t = _conv_out(_conv_out(w, 3, 1, 0), 5, 2, 0)
            layers = [nn.Conv2d(c, 128, 3), nn.ReLU(), nn.Conv2d(128, 64, 5, stride=2), nn.ReLU(), nn.Dropout(0.25),
                      nn.Flatten(), nn.Linear(64 * s * t, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes)]
        else:
            layers = [nn.Flatten(), nn.Linear(c * h * w, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200),
                      nn.ReLU(), nn.Linear(200, num_classes)]
        if min(s if model != "D" else 1, t if model != "D" else 1) < 1:
            raise ValueError(f"input shape {input_shape} is too small for model {model}")
        self.net = nn.Sequential(*layers)


@register_architecture("digits-cnn")
class DigitsCNN(Classifier):
    """Small CNN for 8×8 digits: conv32 3×3 → conv64 3×3 s2 → FC128 → dropout .3 → FC."""

    def __init__(self, input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = {"input_shape": list(input_shape), "num_classes": int(num_classes), "width": int(width)}
        self.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        c, h, w = self.input_shape
        s, t = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * s * t, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels for ``x`` (batched, ``inference_mode``, model in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = torch.cat([model(c.to(device)).argmax(1).cpu() for c in x.split(batch_size)]) if len(x) else \
            torch.empty(0, dtype=torch.long)
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    check_images(x, getattr(model, "input_shape", None))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())


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
    objective: Any = None,
    log_path: str | os.PathLike | None = None,
) -> list[dict[str, float]]:
    """Cross-entropy training with Adam (Defense-GAN: lr 1e-3, batch 128), standard or adversarial.

    ``schedule`` is 'cosine' (decay to 0 over ``epochs``; reaches the paper's accuracy in fewer
    epochs) or 'constant'. With ``test`` the final test accuracy is stored as the model's quality.
    ``objective`` (a :class:`~manifold_defense.training.TrainingObjective`, default standard
    cross-entropy) plugs in an adversary: Madry PGD, on-manifold, the Robust Manifold Defense.
    ``log_path`` receives one JSON line of metrics per epoch.

    Under ``torchrun`` (an initialised ``torch.distributed`` process group) the same call trains with
    DistributedDataParallel: a DistributedSampler shards each epoch, every rank takes
    ``batch_size / world_size`` samples per step (the global batch is unchanged), metrics are
    all-reduced, and only rank 0 writes the checkpoint and the log.
    """
    check_images(x_train, model.input_shape, name="x_train")
    check_labels(y_train, len(x_train), model.num_classes, name="y_train")
    if schedule not in ("cosine", "constant"):
        raise InputError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    from manifold_defense.training import StandardObjective

    objective = objective or StandardObjective()
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
        for idx in batches(epoch):
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
    if schedule == "cosine":
        config["epochs"] = epochs  # the schedule depends on the total, so it is part of the configuration
    if objective.name != "standard":
        config.update({"trainer": "adversarial", **objective.config()})
    if world > 1:
        config["world_size"] = world
    return train_epochs(
        path=path, modules={"model": model}, optimizers={"adam": opt}, schedulers=schedulers, epochs=epochs,
        epoch_fn=epoch_fn, config=config, metadata=metadata, generator=gen, finalize=finalize,
        desc=f"train {type(model).__name__}", progress=progress, writer=rank == 0, log_path=log_path,
    )
