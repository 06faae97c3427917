"""Classifiers: the Defense-GAN MNIST models A–D (Samangouei et al., ICLR 2018), Madry et al.'s MNIST network
(ICLR 2018) and a small CNN for the 8×8 digits (their trainer is ``manifold_defense.training.train_classifier``).

Every classifier takes images in [0, 1] of shape ``input_shape`` and returns logits over
``num_classes`` classes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.validation import InputError, check_images, check_labels
from manifold_defense.utils import evaluation_mode

__all__ = ["Classifier", "DefenseGANClassifier", "MadryMNISTClassifier", "DigitsCNN", "accuracy", "predict"]


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


class DefenseGANClassifier(Classifier):
    """Defense-GAN's MNIST classifiers; ``model`` is one of 'A', 'B', 'C', 'D'.

    A: conv64 5×5 → conv64 5×5 s2 → dropout .25 → FC128 → dropout .5 → FC10.
    B: dropout .2 → conv64 8×8 s2 → conv128 6×6 s2 → conv128 5×5 → dropout .5 → FC10.
    C: conv128 3×3 → conv64 5×5 s2 → dropout .25 → FC128 → dropout .5 → FC10.
    D: FC200 → dropout .5 → FC200 → FC10.
    """

    arch_name = "defensegan-classifier"

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


class MadryMNISTClassifier(Classifier):
    """Madry et al. 2018's MNIST network (their robust MNIST challenge model): conv32 5×5 → max-pool 2 → conv64 5×5
    → max-pool 2 → FC1024 → FC10 (padding 'same', no dropout). 3.3 M weights, four times classifier A's, for about
    the same arithmetic per image (most of them are in the first fully connected layer): the capacity that robust
    training at ℓ∞ 0.3 needs (their Figure 4)."""

    arch_name = "madry-mnist"

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.config = {"input_shape": list(input_shape), "num_classes": int(num_classes)}
        self.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        c, h, w = self.input_shape
        if min(h, w) < 4:
            raise ValueError(f"input shape {input_shape} is too small for two 2×2 poolings")
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(), nn.Linear(1024, num_classes),
        )


class DigitsCNN(Classifier):
    """Small CNN for 8×8 digits: conv32 3×3 → conv64 3×3 s2 → FC128 → dropout .3 → FC."""

    arch_name = "digits-cnn"

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
    device = next(model.parameters()).device
    with evaluation_mode(model), torch.inference_mode():
        return torch.cat([model(c.to(device)).argmax(1).cpu() for c in x.split(batch_size)]) if len(x) else \
            torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    check_images(x, getattr(model, "input_shape", None))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())
