"""Small helpers shared across the library."""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["seed_everything", "resolve_device", "minibatches", "batched_apply", "rows_at_least", "content_keys", "keyed_normal", "tensor_digest",
           "state_digest", "evaluation_mode"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU ``torch.Generator`` seeded alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block; afterwards every submodule's own ``training`` flag is put back.

    ``model.train(was_training)`` would not do: it sets the flag of every submodule to the top module's, so a
    ``DefendedModel`` (an ``nn.Module``, in training mode when built) around an eval-mode classifier would come
    back with the classifier's dropout switched on and its answers random."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


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


def rows_at_least(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``fn(x)``, computed on ``x`` padded (with copies of its last row) to at least ``min_rows`` rows.

    Why: float32 matrix products (and convolutions) of a few rows take other kernel paths than larger
    ones, so a row's result is not bitwise the same in a batch of 3 as in a batch of 100 (measured on a
    2-core CPU with PyTorch's MKL/oneDNN kernels: 1–3, 5–7 and 9–11 rows differ; 12 and more agree).
    Padding small batches makes each row's result independent of its batch. Gradients flow to ``x``'s own
    rows only.
    """
    n = x.shape[0]
    if n >= min_rows or n == 0:
        return fn(x)
    padded = torch.cat([x, x[-1:].expand(min_rows - n, *x.shape[1:])])
    return fn(padded)[:n]


# Counter-based random numbers, keyed per sample. torch.Generator draws depend on how many numbers were
# drawn before, so a sample's random restarts would depend on its position in the batch; these depend on
# (key, counter) only, are vectorised, and are the same on every device.
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # the 64-bit constants of splitmix64 (Steele et al. 2014), as int64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts signed integers arithmetically)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic): a bijective hash of 64-bit integers."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def content_keys(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A 64-bit key per sample from its exact float32 values (and ``seed``): equal inputs get equal keys,
    wherever they sit in a batch."""
    bits = x.detach().reshape(x.shape[0], -1).float().contiguous().view(torch.int32).to(torch.int64)
    pos = torch.arange(bits.shape[1], device=bits.device, dtype=torch.int64)
    return _splitmix64(_splitmix64(bits + pos * _GOLDEN).sum(1) + seed)


def keyed_normal(keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(len(keys), *shape)`` standard normal numbers; row ``i`` depends on ``keys[i]`` only (Box–Muller on
    uniforms from splitmix64 of (key, counter))."""
    count = math.prod(shape)
    counters = torch.arange(2 * ((count + 1) // 2), device=keys.device, dtype=torch.int64)
    z = _splitmix64(keys.to(torch.int64)[:, None] * _MIX1 + counters[None] * _GOLDEN)
    u = (_shr(z, 11).to(torch.float64) + 0.5) * 2.0**-53  # uniform in (0, 1)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    r = torch.sqrt(-2 * torch.log(u1))
    normal = torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], 1)[:, :count]
    return normal.to(dtype).reshape(len(keys), *shape)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (CPU copies)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()
