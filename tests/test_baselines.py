"""Compressed-sensing baselines: orthonormal bases (pixel, DCT, wavelet) and Lasso."""

import numpy as np
import pytest
import torch

from manifold_defense.baselines import basis_matrix, lasso
from manifold_defense.operators import GaussianMeasurements, Inpainting, Nonlinear
from manifold_defense.validation import InputError


class TestSmoke:
    @pytest.mark.parametrize("basis", ["pixel", "dct", "wavelet"])
    @pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
    def test_bases_are_orthonormal(self, basis, shape):
        psi = basis_matrix(shape, basis)
        n = int(np.prod(shape))
        assert psi.shape == (n, n)
        np.testing.assert_allclose(psi.T @ psi, np.eye(n), atol=1e-10)


class TestRecovery:
    def test_lasso_recovers_sparse_signal(self):
        x = torch.zeros(3, 1, 8, 8)
        g = torch.Generator().manual_seed(0)
        for i in range(3):
            x.view(3, -1)[i, torch.randperm(64, generator=g)[:4]] = 0.8  # 4-sparse in pixels
        A = GaussianMeasurements((1, 8, 8), 32, seed=1)
        x_hat = lasso(A, A(x), alpha=1e-3)
        assert float((x_hat - x).pow(2).mean()) < 1e-3
        assert float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1

    def test_dct_basis_wins_on_smooth_images(self, digits_test):
        x = torch.nn.functional.avg_pool2d(digits_test.images[:8], 3, 1, 1)  # smooth images
        A = GaussianMeasurements((1, 8, 8), 24, seed=2)
        y = A(x)
        err = {b: float((lasso(A, y, alpha=1e-3, basis=b) - x).pow(2).mean()) for b in ("pixel", "dct")}
        assert err["dct"] < err["pixel"]


class TestException:
    def test_exception(self):
        A = GaussianMeasurements((1, 8, 8), 10)
        with pytest.raises(InputError, match="linear operator"):
            lasso(Nonlinear(lambda t: t.flatten(1)[:, :10], (1, 8, 8)), torch.zeros(1, 10))
        with pytest.raises(InputError, match="NaN"):
            lasso(A, torch.full((1, 10), float("inf")))
        with pytest.raises(InputError, match="unknown basis"):
            lasso(A, torch.zeros(1, 10), basis="curvelet")
        with pytest.raises(InputError, match="alpha"):
            lasso(Inpainting((1, 8, 8)), torch.zeros(1, 1, 8, 8), alpha=0)
