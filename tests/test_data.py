"""Datasets: the bundled digits split and MNIST from a local ``mnist.npz``."""

import numpy as np
import pytest
import torch

from manifold_defense import data
from manifold_defense.validation import InputError


def _fake_npz(path, n=12):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=np.arange(n) % 10,
             x_test=rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8), y_test=np.arange(n // 2) % 10)


class TestSmoke:
    @pytest.mark.parametrize("split, n", [("train", 1437), ("test", 360)])
    def test_digits(self, split, n):
        x, y = data.load("digits", split)
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))

    def test_returns_copies(self):
        x, _ = data.load("digits", "test")
        x.zero_()
        assert float(data.load("digits", "test").images.max()) == 1.0

    def test_limit(self):
        x, y = data.load("digits", "test", limit=7)
        assert x.shape[0] == 7 and torch.equal(y, data.load("digits", "test").labels[:7])

    @pytest.mark.mnist
    def test_mnist_from_env(self):
        x, y = data.load("mnist", "test")
        assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        # The shared copy keeps the official per-class test counts.
        assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        assert data.load("mnist", "train").images.shape[0] == 60000


class TestSplit:
    def test_digits_split_is_fixed_and_disjoint(self):
        a, b = data.load("digits", "train"), data.load("digits", "train")
        assert torch.equal(a.images, b.images)
        test = data.load("digits", "test")
        train_rows = {tuple(r) for r in a.images.flatten(1).mul(16).round().int().tolist()}
        overlap = sum(tuple(r) in train_rows for r in test.images.flatten(1).mul(16).round().int().tolist())
        assert overlap < 5  # the bundled set has a few exact duplicates; the split itself is disjoint by index


class TestMnistPath:
    def test_mnist_explicit_path(self, tmp_path):
        _fake_npz(tmp_path / "mnist.npz")
        x, y = data.load("mnist", "test", path=tmp_path / "mnist.npz")
        assert x.shape == (6, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4, 5]
        x2, _ = data.load("mnist", "test", path=tmp_path)  # a folder holding mnist.npz
        assert torch.equal(x, x2)

    def test_mnist_env_var(self, tmp_path, monkeypatch):
        _fake_npz(tmp_path / "mnist.npz", n=20)
        monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(tmp_path))
        assert data.load("mnist", "train").images.shape == (20, 1, 28, 28)


class TestException:
    def test_mnist_offline(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(tmp_path / "nowhere"))
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path / "cache"))
        with pytest.raises(data.DataNotFoundError, match=r"Put mnist.npz .* at .*nowhere/mnist.npz"):
            data.load("mnist", "train")

    def test_mnist_bad_file(self, tmp_path):
        (tmp_path / "mnist.npz").write_bytes(b"not an archive")
        with pytest.raises(data.DataNotFoundError, match="could not be read"):
            data.load("mnist", "train", path=tmp_path / "mnist.npz")
        np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 28, 28), np.uint8))
        with pytest.raises(data.DataNotFoundError, match="lacks key"):
            data.load("mnist", "train", path=tmp_path / "partial.npz")

    @pytest.mark.parametrize("kwargs, match", [
        ({"name": "cifar100"}, "unknown dataset 'cifar100'"),
        ({"name": "digits", "split": "validation"}, "unknown split"),
        ({"name": "digits", "limit": 0}, "limit"),
    ])
    def test_arguments(self, kwargs, match):
        with pytest.raises(InputError, match=match):
            data.load(**kwargs)
