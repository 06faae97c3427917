"""Sparsity baselines for linear inverse problems: Lasso in the pixel, DCT and wavelet bases.

``x̂ = Ψ ĉ``, ``ĉ = argmin_c 1/(2m) ‖y − A Ψ c‖² + α‖c‖₁`` with scikit-learn's ``Lasso`` (the CSGM
baseline uses α = 0.1 in the pixel basis), output clipped to [0, 1]. All images of a batch are
solved in one multi-target fit. ``A`` is made explicit by applying the operator to the standard basis
(n forward passes, fine for the small images these baselines are used on).
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import torch

from manifold_defense.operators import LinearOperator
from manifold_defense.validation import InputError

__all__ = ["lasso", "basis_matrix", "BASES"]

BASES = ("pixel", "dct", "wavelet")


@functools.lru_cache(maxsize=16)
def basis_matrix(shape: tuple[int, int, int], basis: str, wavelet: str = "db4") -> np.ndarray:
    """Columns are the orthonormal synthesis atoms Ψ[:, j] of ``basis`` for images of ``shape``."""
    c, h, w = shape
    n = c * h * w
    if basis == "pixel":
        return np.eye(n)
    eye = np.eye(n).reshape(n, c, h, w)
    if basis == "dct":
        from scipy.fft import idctn

        return idctn(eye, axes=(2, 3), norm="ortho").reshape(n, n).T
    if basis == "wavelet":
        try:
            import pywt
        except ImportError as exc:  # pragma: no cover - PyWavelets is a dependency
            raise InputError("the wavelet basis needs PyWavelets (pip install PyWavelets)") from exc
        level = max(1, pywt.dwtn_max_level((h, w), wavelet))
        # Periodised transforms are orthonormal and keep exactly n coefficients when the size allows.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "level too high" on tiny images: still orthonormal
            template = pywt.wavedec2(np.zeros((h, w)), wavelet, mode="periodization", level=level)
        arr, slices = pywt.coeffs_to_array(template)
        if arr.size != h * w:
            level = 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                template = pywt.wavedec2(np.zeros((h, w)), wavelet, mode="periodization", level=level)
            arr, slices = pywt.coeffs_to_array(template)
        atoms = np.zeros((n, c, h, w))
        for j in range(n):
            ch, k = divmod(j, h * w)
            coef = np.zeros(arr.size)
            coef[k] = 1.0
            coeffs = pywt.array_to_coeffs(coef.reshape(arr.shape), slices, output_format="wavedec2")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                atoms[j, ch] = pywt.waverec2(coeffs, wavelet, mode="periodization")[:h, :w]
        return atoms.reshape(n, n).T
    raise InputError(f"unknown basis {basis!r}; use one of {BASES}")


def _operator_matrix(op: LinearOperator) -> np.ndarray:
    n = op.n
    p = next(iter(op.buffers()), None)
    device = p.device if p is not None else torch.device("cpu")
    eye = torch.eye(n, dtype=torch.float64, device=device).view(n, *op.in_shape)
    with torch.no_grad():
        cols = copy.deepcopy(op).double()(eye).reshape(n, -1)  # a copy: the caller's operator keeps its dtype
    return cols.T.cpu().numpy()  # (m, n)


def lasso(op: LinearOperator, y: torch.Tensor, *, alpha: float = 0.1, basis: str = "pixel",
          max_iter: int = 5000) -> torch.Tensor:
    """Lasso reconstruction of images from ``y = op(x) + noise`` in ``basis``; returns ``(N, C, H, W)`` in [0, 1]."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    if not getattr(op, "linear", False):
        raise InputError(f"Lasso needs a linear operator, got {type(op).__name__}")
    op.check_measurements(y)
    if alpha <= 0:
        raise InputError(f"alpha must be > 0, got {alpha}")
    a = _operator_matrix(op) @ basis_matrix(tuple(op.in_shape), basis)
    targets = y.detach().reshape(y.shape[0], -1).double().cpu().numpy().T  # (m, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = Lasso(alpha=alpha, fit_intercept=False, max_iter=max_iter).fit(a, targets)
    coef = np.atleast_2d(model.coef_)  # (N, n)
    x = coef @ basis_matrix(tuple(op.in_shape), basis).T
    return torch.from_numpy(x).float().view(-1, *op.in_shape).clamp(0, 1).to(y.device)
