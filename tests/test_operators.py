"""Measurement operators: linear forward models, their adjoints, noise and ``make_operator``."""

import pytest
import torch

from manifold_defense.operators import (
    Blur,
    FourierSubsampling,
    GaussianMeasurements,
    GaussianNoise,
    Identity,
    Inpainting,
    Nonlinear,
    PartialCirculant,
    SuperResolution,
    make_operator,
)
from manifold_defense.validation import InputError

SHAPE = (1, 8, 8)
LINEAR = {
    "identity": lambda: Identity(SHAPE),
    "gaussian": lambda: GaussianMeasurements(SHAPE, 20, seed=1),
    "circulant": lambda: PartialCirculant(SHAPE, 20, seed=1),
    "inpainting-pixels": lambda: Inpainting(SHAPE, fraction=0.3, seed=1),
    "inpainting-blocks": lambda: Inpainting(SHAPE, fraction=0.6, block=3, seed=1),
    "superres-box": lambda: SuperResolution(SHAPE, 2, kind="box"),
    "superres-bicubic": lambda: SuperResolution(SHAPE, 2, kind="bicubic"),
    "blur": lambda: Blur(SHAPE, sigma=1.0),
    "fourier": lambda: FourierSubsampling(SHAPE, 0.3, seed=1),
    "fourier-rgb": lambda: FourierSubsampling((3, 8, 8), 0.3, seed=1),
}


@pytest.fixture(params=list(LINEAR))
def op(request, device):
    return LINEAR[request.param]().to(device)


class TestSmoke:
    def test_smoke(self, op, device):
        x = torch.rand(3, *op.in_shape, device=device)
        y = op(x)
        assert y.shape == (3, *op.out_shape)
        # m counts measurements: every output entry, except the unobserved (zero-filled) pixels of inpainting
        observed = int(op.mask.sum()) * op.in_shape[0] if isinstance(op, Inpainting) else y[0].numel()
        assert op.m == observed
        assert op.adjoint(y).shape == x.shape

    def test_make_operator(self):
        assert isinstance(make_operator("circulant", SHAPE, m=10), PartialCirculant)
        assert make_operator("inpainting", SHAPE, m=16).mask.sum() == 16
        assert isinstance(make_operator("superres", SHAPE, factor=4), SuperResolution)

    def test_nonlinear_wraps_a_classifier(self):
        from manifold_defense.classifiers import DigitsCNN

        clf = DigitsCNN(width=4).eval()
        op = Nonlinear(clf, SHAPE)
        assert op.out_shape == (10,) and not op.linear
        x = torch.rand(2, *SHAPE)
        torch.testing.assert_close(op(x), clf(x))
        assert not hasattr(op, "adjoint")


class TestAdjoint:
    def test_adjointness(self, op, device):
        """⟨A x, v⟩ = ⟨x, Aᵀ v⟩ for random x, v (float64)."""
        g = torch.Generator().manual_seed(0)
        op = op.double()
        x = torch.randn(4, *op.in_shape, generator=g, dtype=torch.float64).to(device)
        v = torch.randn(4, *op.out_shape, generator=g, dtype=torch.float64).to(device)
        lhs = (op(x) * v).flatten(1).sum(1)
        rhs = (x * op.adjoint(v)).flatten(1).sum(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)

    def test_fourier_is_an_isometry_when_fully_sampled(self):
        op = FourierSubsampling(SHAPE, 1.0).double()
        x = torch.randn(2, *SHAPE, dtype=torch.float64)
        torch.testing.assert_close(op(x).norm(dim=1), x.flatten(1).norm(dim=1))  # orthonormal DFT: Parseval
        torch.testing.assert_close(op.adjoint(op(x)), x)


class TestLinearity:
    def test_linearity(self, op, device):
        g = torch.Generator().manual_seed(1)
        a, b = (torch.randn(2, *op.in_shape, generator=g).to(device) for _ in range(2))
        torch.testing.assert_close(op(2 * a - 3 * b), 2 * op(a) - 3 * op(b), rtol=1e-4, atol=1e-4)

    def test_circulant_equals_its_matrix(self):
        op = PartialCirculant((1, 4, 5), 7, seed=3).double()
        n = 20
        # Build P_Ω C_g D by hand from the stored parts.
        g = op.kernel
        circ = torch.stack([torch.roll(g, k) for k in range(n)], 1)  # circ[i, j] = g[(i - j) mod n]
        dense = circ[op.rows] * op.signs.double()[None]
        x = torch.randn(3, 1, 4, 5, dtype=torch.float64)
        torch.testing.assert_close(op(x), x.flatten(1) @ dense.T)
        torch.testing.assert_close(op.dense(), dense)
        assert op.kernel.numel() + op.signs.numel() + op.rows.numel() < 3 * n  # O(n) storage


class TestConstruction:
    def test_circulant_is_memory_light(self):
        op = PartialCirculant((3, 64, 64), 2500)
        assert sum(b.numel() * b.element_size() for b in op.buffers()) < 0.5e6  # a dense A would need 123 MB

    def test_gaussian_matrix_scale(self):
        A = GaussianMeasurements((1, 28, 28), 400, seed=0).matrix
        assert A.var().item() == pytest.approx(1 / 400, rel=0.02)
        assert torch.equal(A, GaussianMeasurements((1, 28, 28), 400, seed=0).matrix)
        assert not torch.equal(A, GaussianMeasurements((1, 28, 28), 400, seed=1).matrix)

    def test_inpainting_fraction(self):
        op = Inpainting((1, 28, 28), fraction=0.25, seed=0)
        assert float(op.mask.mean()) == pytest.approx(0.25, abs=0.01)
        blocks = Inpainting((1, 28, 28), fraction=0.7, block=6, seed=0)
        assert 0.6 <= float(blocks.mask.mean()) <= 0.72

    def test_noise_is_seeded(self):
        y = torch.zeros(3, 100)
        n1, n2 = GaussianNoise(0.5, seed=2)(y), GaussianNoise(0.5, seed=2)(y)
        assert torch.equal(n1, n2) and n1.std().item() == pytest.approx(0.5, rel=0.1)
        total = GaussianNoise.per_measurement(0.1, 100)(y)
        assert total.norm(dim=1).mean().item() == pytest.approx(0.1, rel=0.2)  # ‖η‖ ≈ σ (CSGM's convention)


class TestGradcheck:
    @pytest.mark.parametrize("name", list(LINEAR)[:4] + ["blur", "fourier"])
    def test_gradcheck(self, name):
        op = LINEAR[name]().double()
        x = torch.rand(1, *SHAPE, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: op(t).flatten(1)[:, :6], (x,))


class TestException:
    def test_exception(self):
        op = GaussianMeasurements(SHAPE, 10)
        with pytest.raises(InputError, match=r"shape \(2, 11\).*\(N, 10\)"):
            op.adjoint(torch.zeros(2, 11))
        with pytest.raises(InputError, match="NaN or inf"):
            op.check_measurements(torch.full((2, 10), float("nan")))
        with pytest.raises(InputError, match="channel count"):
            op(torch.rand(2, 3, 8, 8))
        with pytest.raises(InputError, match="1 <= m <= n"):
            PartialCirculant(SHAPE, 65)
        with pytest.raises(InputError, match="divisor"):
            SuperResolution(SHAPE, 3)
        with pytest.raises(InputError, match="odd"):
            Blur(SHAPE, 1.0, size=4)
        with pytest.raises(InputError, match="unknown operator"):
            make_operator("radon", SHAPE)
        with pytest.raises(InputError, match="needs m"):
            make_operator("gaussian", SHAPE)
