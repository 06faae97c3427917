"""Datasets as in-memory tensors: float32 NCHW images in [0, 1] and int64 labels.

``load(name, split)`` is the one way in. ``digits`` (scikit-learn's bundled 8×8 digits) needs
nothing from outside; ``mnist`` is looked up, in order, at an explicit ``path``, at
``$MANIFOLD_DEFENSE_DATA/mnist.npz``, in a torchvision ``MNIST`` folder, and finally downloaded by
torchvision only when the caller passes ``download=True``. ``cifar10`` (3×32×32) is the python version
of CIFAR-10, torchvision's ``cifar-10-batches-py/`` folder (``data_batch_1`` … ``data_batch_5``,
``test_batch``), looked up in an explicit ``path`` (the folder itself or one holding it), in
``$MANIFOLD_DEFENSE_DATA``, then in the cache's ``data/`` folder, and downloaded by torchvision only when
the caller passes ``download=True``.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from manifold_defense.validation import InputError

__all__ = ["load", "DATASETS", "DataNotFoundError", "Split", "data_dir", "cache_dir", "image_shape"]

DATA_ENV = "MANIFOLD_DEFENSE_DATA"
CACHE_ENV = "MANIFOLD_DEFENSE_CACHE"
DATASETS = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
SPLITS = ("train", "test")
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


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
    """Load ``split`` ('train' or 'test') of dataset ``name`` ('digits', 'mnist' or 'cifar10').

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
    elif name == "cifar10":
        x, y = _cifar10(split, None if path is None else Path(path).expanduser(), download)
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


def _cifar10(split: str, path: Path | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if path is not None:
        cands = [path / CIFAR10_FOLDER, path]  # a folder holding cifar-10-batches-py/, or that folder itself
    else:
        cands = [d / CIFAR10_FOLDER for d in (data_dir(), cache_dir() / "data") if d is not None]
    files = CIFAR10_FILES[split]
    for cand in cands:
        if all((cand / f).is_file() for f in files):
            return _cifar10_folder(cand, split)
    tried = "; ".join(str(c) for c in cands)
    if download:
        from torchvision.datasets import CIFAR10

        root = path if path is not None else cache_dir() / "data"
        try:
            CIFAR10(str(root), train=split == "train", download=True)
        except (RuntimeError, OSError) as exc:
            raise DataNotFoundError(f"downloading CIFAR-10 to {root} failed: {exc}") from exc
        return _cifar10_folder(root / CIFAR10_FOLDER, split)
    target = path if path is not None else data_dir() or cache_dir() / "data"
    raise DataNotFoundError(
        f"CIFAR-10 ({split}) is not available offline. Put torchvision's {CIFAR10_FOLDER} folder (the python "
        f"version: {', '.join(CIFAR10_FILES['train'] + CIFAR10_FILES['test'])}) at {target / CIFAR10_FOLDER}, "
        f"or set {DATA_ENV} to the folder that holds it, or pass path=..., or allow a torchvision download "
        f"with download=True. Looked at: {tried}"
    )


def _cifar10_folder(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = [folder / f for f in CIFAR10_FILES[split]]
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _from_cifar10_batches(str(folder.resolve()), split, stamp)


@functools.lru_cache(maxsize=4)
def _from_cifar10_batches(folder: str, split: str, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    # Memoised like _from_npz (``stamp``: each batch's mtime/size). The pickles are read here rather than by
    # torchvision's CIFAR10, which refuses any folder whose files miss its md5 list (a re-pickled or partial
    # copy, a test's fake folder). Like torchvision, this unpickles: only read folders you trust.
    xs, ys = [], []
    for name in CIFAR10_FILES[split]:
        file = Path(folder) / name
        try:
            with open(file, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
            x = np.asarray(entry["data"], dtype=np.uint8)
            y = np.asarray(entry["labels"], dtype=np.int64)
        except KeyError as exc:
            raise DataNotFoundError(f"{file} lacks key {exc}; a CIFAR-10 batch is a dict with 'data' and "
                                    "'labels'") from exc
        except Exception as exc:
            raise DataNotFoundError(f"{file} could not be read as a CIFAR-10 python batch: {exc}") from exc
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise DataNotFoundError(f"{file} has unexpected shapes {x.shape} / {y.shape}; expected (N, 3072) / (N,)")
        if len(y) and not (y.min() >= 0 and y.max() < 10):
            raise DataNotFoundError(f"{file} has labels outside 0..9")
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32)).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(np.concatenate(ys))
