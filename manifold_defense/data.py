"""Datasets as in-memory tensors: float32 NCHW images in [0, 1] and int64 labels.

``load(name, split)`` is the one way in. ``digits`` (scikit-learn's bundled 8×8 digits) needs
nothing from outside; ``mnist`` is looked up, in order, at an explicit ``path``, at
``$MANIFOLD_DEFENSE_DATA/mnist.npz``, in a torchvision ``MNIST`` folder, and finally downloaded by
torchvision only when the caller passes ``download=True``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from manifold_defense.validation import InputError

__all__ = ["load", "DATASETS", "DataNotFoundError", "Split", "data_dir", "cache_dir", "image_shape"]

DATA_ENV = "MANIFOLD_DEFENSE_DATA"
CACHE_ENV = "MANIFOLD_DEFENSE_CACHE"
DATASETS = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
SPLITS = ("train", "test")
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


class DataNotFoundError(FileNotFoundError):
    """A dataset is not available offline; the message says where to put it."""


class Split(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64


def cache_dir() -> Path:
    """Where trained models and downloads live: ``$MANIFOLD_DEFENSE_CACHE`` or ``~/.cache/manifold-defense``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "manifold-defense").expanduser()


def data_dir() -> Path | None:
    """``$MANIFOLD_DEFENSE_DATA`` if set."""
    d = os.environ.get(DATA_ENV)
    return Path(d).expanduser() if d else None


def image_shape(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a dataset's images."""
    _check_name(name)
    return DATASETS[name]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load(
    name: str,
    split: str = "train",
    *,
    path: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> Split:
    """Load ``split`` ('train' or 'test') of dataset ``name`` ('digits' or 'mnist').

    Returns ``Split(images, labels)``: float32 ``(N, C, H, W)`` in [0, 1] and int64 ``(N,)``.
    ``limit`` keeps the first ``limit`` samples (test protocols use "the first N test images").
    The returned tensors are fresh copies; modifying them does not affect later calls.
    """
    _check_name(name)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {SPLITS}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive number of samples, got {limit}")
    if name == "digits":
        x, y = _digits(split)
    else:
        x, y = _mnist(split, None if path is None else str(Path(path).expanduser()), download)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return Split(x.clone(), y.clone())


@functools.lru_cache(maxsize=None)
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    idx = np.arange(len(ds.target))
    train_idx, test_idx = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=ds.target
    )
    sel = np.sort(train_idx if split == "train" else test_idx)
    x = torch.from_numpy(ds.images[sel].astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(ds.target[sel].astype(np.int64))
    return x, y


def _candidates(path: str | None) -> list[Path]:
    out: list[Path] = []
    if path is not None:
        p = Path(path)
        out += [p] if p.suffix == ".npz" else [p / "mnist.npz", p]
        return out
    d = data_dir()
    if d is not None:
        out += [d / "mnist.npz", d]
    out.append(cache_dir() / "data")
    return out


def _mnist(split: str, path: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tried: list[str] = []
    for cand in _candidates(path):
        if cand.suffix == ".npz":
            tried.append(str(cand))
            if cand.is_file():
                st = cand.stat()
                return _from_npz(str(cand.resolve()), st.st_mtime_ns, st.st_size, split)
        else:
            tried.append(f"{cand}/MNIST (torchvision layout)")
            if (cand / "MNIST" / "raw").is_dir():
                got = _from_torchvision(cand, split, download=False)
                if got is not None:
                    return got
    if path is not None and not download:
        raise DataNotFoundError(f"no MNIST at {path}: expected an .npz file with x_train/y_train/x_test/y_test "
                                f"or a folder holding mnist.npz or torchvision's MNIST/ (looked at: {'; '.join(tried)})")
    if download:
        root = Path(path) if path is not None and Path(path).suffix != ".npz" else cache_dir() / "data"
        got = _from_torchvision(root, split, download=True)
        if got is not None:
            return got
    target = data_dir() or cache_dir() / "data"
    raise DataNotFoundError(
        "MNIST is not available offline. Put mnist.npz (keys x_train, y_train, x_test, y_test; uint8 28x28) at "
        f"{target / 'mnist.npz'}, or set {DATA_ENV} to the folder that holds it, or pass path=..., "
        f"or allow a torchvision download with download=True. Looked at: {'; '.join(tried)}"
    )


@functools.lru_cache(maxsize=4)
def _from_npz(file: str, mtime_ns: int, size: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Memoised on the resolved file and its mtime/size: repeated loads are free, edits are seen.
    try:
        with np.load(file) as f:
            x = f[f"x_{split}"]
            y = f[f"y_{split}"]
    except KeyError as exc:
        raise DataNotFoundError(f"{file} lacks key {exc}; expected x_train, y_train, x_test, y_test") from exc
    except Exception as exc:
        raise DataNotFoundError(f"{file} could not be read as an .npz archive: {exc}") from exc
    return _to_tensors(x, y, str(file))


def _from_torchvision(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=split == "train", download=download)
    except RuntimeError:
        return None
    return _to_tensors(ds.data.numpy(), ds.targets.numpy(), str(root))


def _to_tensors(x: np.ndarray, y: np.ndarray, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataNotFoundError(f"MNIST at {where} has unexpected shapes {x.shape} / {y.shape}")
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0).unsqueeze(1)
    return xt, torch.from_numpy(np.asarray(y, dtype=np.int64))
