"""Small helpers shared across the library."""

from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["seed_everything", "resolve_device", "minibatches", "batched_apply"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU ``torch.Generator`` seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" → CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None, *, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index tensors covering ``range(n)`` in batches (a seeded permutation when ``shuffle``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]


def batched_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``torch.cat([fn(chunk) for chunk in x.split(batch_size)])`` under ``inference_mode``."""
    with torch.inference_mode():
        return torch.cat([fn(chunk) for chunk in x.split(batch_size)])
