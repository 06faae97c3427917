"""Measurement operators A for inverse problems ``y = A(x) + noise`` (deepinv-style nn.Modules).

Every operator maps a batch of images ``(N, C, H, W)`` to measurements and is seeded at
construction. Linear operators also have ``adjoint``; vector-valued ones return ``(N, m)``,
image-valued ones (identity, inpainting, blur, super-resolution) return images. Nothing builds an
m×n matrix where a fast transform exists (``PartialCirculant`` and ``FourierSubsampling`` are O(n)
memory); ``GaussianMeasurements`` is dense by definition.

Noise is a separate, seeded model: ``GaussianNoise``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.validation import InputError, check_images

__all__ = [
    "Operator",
    "LinearOperator",
    "Identity",
    "GaussianMeasurements",
    "PartialCirculant",
    "Inpainting",
    "SuperResolution",
    "Blur",
    "FourierSubsampling",
    "Nonlinear",
    "GaussianNoise",
    "make_operator",
]


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


class Operator(nn.Module):
    """Base class: ``forward(x) → y`` on batches of images of shape ``in_shape``."""

    linear: bool = False
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, ...]

    def __init__(self, in_shape: Sequence[int]) -> None:
        super().__init__()
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise InputError(f"in_shape must be (C, H, W) with positive sizes, got {tuple(in_shape)}")
        self.in_shape = tuple(int(s) for s in in_shape)  # type: ignore[assignment]

    @property
    def n(self) -> int:
        return _numel(self.in_shape)

    @property
    def m(self) -> int:
        """Number of measurements per image."""
        return _numel(self.out_shape)

    def check_measurements(self, y: torch.Tensor, *, name: str = "y") -> torch.Tensor:
        """Measurements must be a non-empty batch of shape ``(N, *out_shape)`` with finite values."""
        if not isinstance(y, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape[1:]) != tuple(self.out_shape) or y.dim() != len(self.out_shape) + 1:
            raise InputError(
                f"{name} has shape {tuple(y.shape)} but {type(self).__name__} produces measurements of shape "
                f"(N, {', '.join(map(str, self.out_shape))})"
            )
        if y.shape[0] == 0:
            raise InputError(f"{name} is an empty batch (N = 0)")
        if not bool(torch.isfinite(y).all()):
            raise InputError(f"{name} contains NaN or inf values; the inversion would return garbage")
        return y

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            check_images(x, self.in_shape, bounds=None)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={tuple(self.out_shape)}"


class LinearOperator(Operator):
    """A linear operator; ``adjoint`` defaults to the exact vector-Jacobian product of ``forward``."""

    linear = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: exact (here the vector-Jacobian product of ``forward``; subclasses use fast transforms)."""
        self.check_measurements(y)
        x0 = torch.zeros(y.shape[0], *self.in_shape, device=y.device, dtype=y.dtype, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x0), x0, grad_outputs=y, create_graph=y.requires_grad)
        return g


class Identity(LinearOperator):
    """``A = I``: denoising, and the projection of a defense onto the generator's range."""

    def __init__(self, in_shape: Sequence[int]) -> None:
        super().__init__(in_shape)
        self.out_shape = self.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y


class GaussianMeasurements(LinearOperator):
    """``y = A x`` with a dense ``A ∈ R^{m×n}``, ``A_ij ~ N(0, 1/m)`` (Bora et al. 2017)."""

    def __init__(self, in_shape: Sequence[int], m: int, *, seed: int = 0) -> None:
        super().__init__(in_shape)
        if not 1 <= m:
            raise InputError(f"number of measurements m must be >= 1, got {m}")
        self.out_shape = (int(m),)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.randn(m, self.n, generator=g) / math.sqrt(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return x.flatten(1) @ self.matrix.T.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurements(y)
        return (y @ self.matrix.to(y.dtype)).view(-1, *self.in_shape)


class PartialCirculant(LinearOperator):
    """``y = P_Ω(g ⊛ (d ⊙ x))``: random signs ``d``, circular convolution with ``g ~ N(0, 1/m)``, ``m``
    of the ``n`` outputs kept (Ω random). O(n log n) time and O(n) memory via the FFT.
    """

    def __init__(self, in_shape: Sequence[int], m: int, *, seed: int = 0) -> None:
        super().__init__(in_shape)
        if not 1 <= m <= self.n:
            raise InputError(f"PartialCirculant needs 1 <= m <= n = {self.n}, got m = {m}")
        self.out_shape = (int(m),)
        gen = torch.Generator().manual_seed(seed)
        g = torch.randn(self.n, generator=gen) / math.sqrt(m)
        # Stored in real space: a complex buffer would be silently broken by module.double()/.float().
        self.register_buffer("kernel", g)
        self.register_buffer("signs", torch.randint(0, 2, (self.n,), generator=gen).float() * 2 - 1)
        self.register_buffer("rows", torch.randperm(self.n, generator=gen)[:m].sort().values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        v = x.flatten(1) * self.signs.to(x.dtype)
        c = torch.fft.irfft(torch.fft.rfft(v) * torch.fft.rfft(self.kernel.to(v.dtype)), n=self.n)
        return c[:, self.rows]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurements(y)
        full = y.new_zeros(y.shape[0], self.n).index_copy(1, self.rows, y)
        kf = torch.fft.rfft(self.kernel.to(y.dtype))
        c = torch.fft.irfft(torch.fft.rfft(full) * kf.conj(), n=self.n)  # correlation with g
        return (c * self.signs.to(y.dtype)).view(-1, *self.in_shape)

    def dense(self) -> torch.Tensor:
        """The explicit m×n matrix (for tests at small n only)."""
        eye = torch.eye(self.n, dtype=self.signs.dtype, device=self.signs.device).view(-1, *self.in_shape)
        return self.forward(eye).T


class Inpainting(LinearOperator):
    """Keep a random subset of pixels (``fraction`` observed), or hide random ``block``×``block`` squares.

    Output is image-shaped with unobserved pixels set to 0; ``mask`` (1 = observed) is shared over channels.
    """

    def __init__(self, in_shape: Sequence[int], *, fraction: float = 0.5, block: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(in_shape)
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"observed fraction must be in (0, 1], got {fraction}")
        self.out_shape = self.in_shape
        _, h, w = self.in_shape
        gen = torch.Generator().manual_seed(seed)
        if block is None:
            mask = (torch.rand(h * w, generator=gen).argsort() < round(fraction * h * w)).float().view(h, w)
        else:
            if not 1 <= block <= min(h, w):
                raise InputError(f"block must be in [1, {min(h, w)}], got {block}")
            mask = torch.ones(h, w)
            target = (1 - fraction) * h * w
            while float((1 - mask).sum()) < target:  # construction only, not a hot path
                i = int(torch.randint(0, h - block + 1, (1,), generator=gen))
                j = int(torch.randint(0, w - block + 1, (1,), generator=gen))
                mask[i : i + block, j : j + block] = 0
        self.register_buffer("mask", mask.view(1, 1, h, w))

    @property
    def m(self) -> int:
        """Measurements per image: the observed entries (channels × observed pixels), not the zero-filled image."""
        return int(self.mask.sum()) * self.in_shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return x * self.mask.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurements(y)
        return y * self.mask.to(y.dtype)


class SuperResolution(LinearOperator):
    """Downsampling by ``factor``: ``kind='box'`` (block averages) or ``'bicubic'`` (antialiased bicubic)."""

    def __init__(self, in_shape: Sequence[int], factor: int = 2, *, kind: str = "box") -> None:
        super().__init__(in_shape)
        c, h, w = self.in_shape
        if factor < 1 or h % factor or w % factor:
            raise InputError(f"factor must be a positive divisor of the image size {h}x{w}, got {factor}")
        if kind not in ("box", "bicubic"):
            raise InputError(f"kind must be 'box' or 'bicubic', got {kind!r}")
        self.factor, self.kind = int(factor), kind
        self.out_shape = (c, h // factor, w // factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        if self.kind == "box":
            return F.avg_pool2d(x, self.factor)
        return F.interpolate(x, size=self.out_shape[1:], mode="bicubic", antialias=True, align_corners=False)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "box":
            self.check_measurements(y)
            return F.interpolate(y, scale_factor=self.factor, mode="nearest") / self.factor**2
        return super().adjoint(y)  # exact, by autograd through the (linear) bicubic resampling


class Blur(LinearOperator):
    """Convolution with a Gaussian kernel (``sigma``, odd ``size``), zero padding, same-size output."""

    def __init__(self, in_shape: Sequence[int], sigma: float = 1.0, size: int | None = None) -> None:
        super().__init__(in_shape)
        if sigma <= 0:
            raise InputError(f"sigma must be > 0, got {sigma}")
        size = size or 2 * math.ceil(2 * sigma) + 1
        if size % 2 == 0:
            raise InputError(f"kernel size must be odd, got {size}")
        t = torch.arange(size, dtype=torch.float64) - size // 2
        k1 = torch.exp(-(t**2) / (2 * sigma**2))
        k2 = torch.outer(k1, k1)
        self.register_buffer("kernel", (k2 / k2.sum()).float().expand(self.in_shape[0], 1, size, size).clone())
        self.out_shape = self.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        k = self.kernel.to(x.dtype)
        return F.conv2d(x, k, padding=k.shape[-1] // 2, groups=self.in_shape[0])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurements(y)
        k = self.kernel.to(y.dtype)
        return F.conv_transpose2d(y, k, padding=k.shape[-1] // 2, groups=self.in_shape[0])


class FourierSubsampling(LinearOperator):
    """MRI-style: the orthonormal 2-D DFT sampled at ``fraction`` of the frequencies (the lowest
    ``center`` fraction always kept), returned as real and imaginary parts ``(N, 2m)``.
    """

    def __init__(self, in_shape: Sequence[int], fraction: float = 0.25, *, center: float = 0.04,
                 seed: int = 0) -> None:
        super().__init__(in_shape)
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"fraction must be in (0, 1], got {fraction}")
        c, h, w = self.in_shape
        gen = torch.Generator().manual_seed(seed)
        fy = torch.fft.fftfreq(h).abs()[:, None]
        fx = torch.fft.fftfreq(w).abs()[None, :]
        radius = torch.sqrt(fy**2 + fx**2)
        n_keep = max(1, round(fraction * h * w))
        n_center = min(n_keep, max(1, round(center * h * w)))
        order_center = radius.flatten().argsort()
        keep = torch.zeros(h * w, dtype=torch.bool)
        keep[order_center[:n_center]] = True
        rest = (~keep).nonzero().squeeze(1)
        keep[rest[torch.randperm(len(rest), generator=gen)[: n_keep - n_center]]] = True
        self.register_buffer("index", keep.nonzero().squeeze(1))
        self.out_shape = (2 * c * len(self.index),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        k = torch.fft.fft2(x, norm="ortho").flatten(2)[..., self.index]  # (N, C, m) complex
        return torch.view_as_real(k).flatten(1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurements(y)
        c, h, w = self.in_shape
        k = torch.view_as_complex(y.reshape(y.shape[0], c, -1, 2).contiguous())
        full = torch.zeros(y.shape[0], c, h * w, dtype=k.dtype, device=y.device)
        full[..., self.index] = k
        return torch.fft.ifft2(full.view(-1, c, h, w), norm="ortho").real


class Nonlinear(Operator):
    """Any differentiable callable as a forward operator (a classifier, a nonlinear sensor ...).

    ``out_shape`` is inferred from one evaluation on a zero image.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int],
                 out_shape: Sequence[int] | None = None) -> None:
        super().__init__(in_shape)
        self.fn = fn
        if out_shape is None:
            p = next(iter(fn.parameters()), None) if isinstance(fn, nn.Module) else None
            with torch.no_grad():
                probe = fn(torch.zeros(1, *self.in_shape, device=p.device if p is not None else "cpu"))
            out_shape = tuple(probe.shape[1:])
        self.out_shape = tuple(int(s) for s in out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return self.fn(x)


class GaussianNoise(nn.Module):
    """Additive white Gaussian noise ``η ~ N(0, σ²)`` per measurement, seeded.

    CSGM's convention ``σ² / m`` per entry (so ‖η‖ ≈ σ) is ``GaussianNoise.per_measurement(σ, m)``.
    """

    def __init__(self, sigma: float, *, seed: int = 0) -> None:
        super().__init__()
        if sigma < 0:
            raise InputError(f"noise sigma must be >= 0, got {sigma}")
        self.sigma, self.seed = float(sigma), int(seed)

    @classmethod
    def per_measurement(cls, total_sigma: float, m: int, *, seed: int = 0) -> "GaussianNoise":
        return cls(total_sigma / math.sqrt(m), seed=seed)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return y
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        return y + self.sigma * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)


def make_operator(name: str, in_shape: Sequence[int], *, m: int | None = None, seed: int = 0,
                  **kwargs) -> Operator:
    """Build an operator by name: identity, gaussian, circulant, inpainting, superres, blur, fourier.

    ``m`` is the number of measurements for gaussian/circulant, the observed pixel count for
    inpainting, and the number of sampled frequencies for fourier.
    """
    n_pix = _numel(in_shape[1:])
    if name == "identity":
        return Identity(in_shape)
    if name in ("gaussian", "circulant"):
        if m is None:
            raise InputError(f"operator {name!r} needs m (the number of measurements)")
        return (GaussianMeasurements if name == "gaussian" else PartialCirculant)(in_shape, m, seed=seed)
    if name == "inpainting":
        frac = kwargs.pop("fraction", None) or (m / n_pix if m else 0.5)
        return Inpainting(in_shape, fraction=frac, seed=seed, **kwargs)
    if name == "superres":
        return SuperResolution(in_shape, **kwargs)
    if name == "blur":
        return Blur(in_shape, **kwargs)
    if name == "fourier":
        frac = kwargs.pop("fraction", None) or (m / n_pix if m else 0.25)
        return Fourier(in_shape, fraction=frac, seed=seed, **kwargs)
    raise InputError(f"unknown operator {name!r}; use identity, gaussian, circulant, inpainting, superres, blur, "
                     "fourier")


Fourier = FourierSubsampling
