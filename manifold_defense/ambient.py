"""Random measurement models for AmbientGAN (Bora, Price, Dimakis, "AmbientGAN: Generative models from lossy
measurements", ICLR 2018).

A :class:`RandomMeasurement` is a family ``A_θ``: every call draws fresh parameters ``θ`` for every sample
(``sample``) and applies them (``apply``), differentiably in the images, so a generator can be trained on
what its samples look like *after* measurement — the discriminator compares ``A_θ(G(z))`` with real
measurements ``A_θ'(x)`` and never sees a clean image. The paper's MNIST families:

- :class:`BlockPixels` — each pixel dropped independently with probability ``p`` (the kept ones scaled by
  ``1 / (1 − p)``, as the paper's code does);
- :class:`BlurNoise` — a fixed Gaussian blur (5×5, σ = 1) and fresh additive Gaussian noise;
- :class:`KeepPatch` — everything outside a ``size`` × ``size`` patch at a random place set to zero.

Each measurement keeps the image's shape (the library's critics apply unchanged) and says what is known of
``θ`` (``params_known``) for the "unmeasure" baseline, which inverts the measurement before plain training.
``make_measurement(name, shape, **kw)`` builds one by name (``MEASUREMENTS``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from manifold_defense.operators import Blur
from manifold_defense.validation import InputError, check_images

__all__ = ["RandomMeasurement", "BlockPixels", "BlurNoise", "KeepPatch", "MEASUREMENTS", "make_measurement"]


class RandomMeasurement(nn.Module):
    """``y = A_θ(x)`` with ``θ`` drawn per sample and call: ``forward(x, generator)`` = ``apply(x, sample(...))``.

    ``sample(n, generator, device)`` returns the parameters as tensors with a leading batch dimension;
    ``apply(x, params)`` is differentiable in ``x``; ``config()`` is what a checkpoint stores (a resumed
    training with another measurement is refused)."""

    name = "measurement"

    def __init__(self, image_shape: Sequence[int]) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
        self.image_shape = tuple(int(s) for s in image_shape)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Fresh parameters θ for ``n`` samples (tensors with a leading batch dimension), drawn on the CPU from
        ``generator`` so that a seeded run is the same on every device."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``A_θ(x)`` with the given parameters, differentiable in ``x``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The family and its settings (stored in a training checkpoint's configuration)."""
        return {"measurement": self.name, "image_shape": list(self.image_shape)}

    def _check(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            check_images(x, self.image_shape, bounds=None)
        for k, v in params.items():
            if v.shape[0] != x.shape[0]:
                raise InputError(f"measurement parameter {k!r} holds {v.shape[0]} samples but x holds {x.shape[0]}")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, x.device))


def _uniform(shape: Sequence[int], generator: torch.Generator | None, device) -> torch.Tensor:
    # drawn on the CPU from the (CPU) generator, so a seeded run is the same on every device
    return torch.rand(*shape, generator=generator).to(device)


class BlockPixels(RandomMeasurement):
    """Each pixel (all its channels) dropped independently with probability ``p``; kept pixels scaled by
    ``1 / (1 − p)`` (the measurement's mean is the image). ``params``: the 0/1 ``mask`` per sample."""

    name = "block_pixels"

    def __init__(self, image_shape: Sequence[int], p: float = 0.5) -> None:
        super().__init__(image_shape)
        if not 0 <= p < 1:
            raise InputError(f"block-pixels drop probability p must be in [0, 1), got {p}")
        self.p = float(p)

    def config(self) -> dict[str, Any]:
        """The family, the image shape and ``p``."""
        return super().config() | {"p": self.p}

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A 0/1 pixel mask per sample (1: kept, with probability 1 − p)."""
        _, h, w = self.image_shape
        return {"mask": (_uniform((n, 1, h, w), generator, device) >= self.p).float()}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The kept pixels, scaled by 1 / (1 − p); the others 0."""
        self._check(x, params)
        return x * params["mask"].to(x.dtype) / (1 - self.p)


class BlurNoise(RandomMeasurement):
    """A Gaussian blur (``blur_sigma``, ``size`` × ``size``, zero padding) then white Gaussian noise of standard
    deviation ``sigma`` drawn afresh for every sample (``params``: the ``noise``)."""

    name = "blur_noise"

    def __init__(self, image_shape: Sequence[int], sigma: float = 0.1, blur_sigma: float = 1.0, size: int = 5) -> None:
        super().__init__(image_shape)
        if sigma < 0:
            raise InputError(f"noise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.blur = Blur(image_shape, sigma=blur_sigma, size=size)
        self.blur_sigma, self.size = float(blur_sigma), int(size)

    def config(self) -> dict[str, Any]:
        """The family, the image shape, the noise and the blur."""
        return super().config() | {"sigma": self.sigma, "blur_sigma": self.blur_sigma, "size": self.size}

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The additive noise of each sample."""
        return {"noise": self.sigma * torch.randn(n, *self.image_shape, generator=generator).to(device)}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The blurred image plus its noise."""
        self._check(x, params)
        return self.blur(x) + params["noise"].to(x.dtype)


class KeepPatch(RandomMeasurement):
    """Only a ``size`` × ``size`` patch at a uniformly random place is kept; the rest is zero (``params``: the
    patch's ``mask``)."""

    name = "keep_patch"

    def __init__(self, image_shape: Sequence[int], size: int = 14) -> None:
        super().__init__(image_shape)
        _, h, w = self.image_shape
        if not 1 <= size <= min(h, w):
            raise InputError(f"patch size must be in [1, {min(h, w)}] for {h}x{w} images, got {size}")
        self.size = int(size)

    def config(self) -> dict[str, Any]:
        """The family, the image shape and the patch size."""
        return super().config() | {"size": self.size}

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The 0/1 mask of each sample's patch (its top-left corner uniform over the places it fits)."""
        _, h, w = self.image_shape
        top = (_uniform((n,), generator, "cpu") * (h - self.size + 1)).long().clamp(max=h - self.size)
        left = (_uniform((n,), generator, "cpu") * (w - self.size + 1)).long().clamp(max=w - self.size)
        rows, cols = torch.arange(h), torch.arange(w)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + self.size)
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + self.size)
        return {"mask": (in_rows[:, :, None] & in_cols[:, None, :]).float()[:, None].to(device)}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The patch; the rest 0."""
        self._check(x, params)
        return x * params["mask"].to(x.dtype)


MEASUREMENTS = {c.name: c for c in (BlockPixels, BlurNoise, KeepPatch)}


def make_measurement(name: str, image_shape: Sequence[int], **kwargs: Any) -> RandomMeasurement:
    """A random measurement model by name (``block_pixels``: ``p``; ``blur_noise``: ``sigma``, ``blur_sigma``,
    ``size``; ``keep_patch``: ``size``); unknown names and settings are one-line errors."""
    if name not in MEASUREMENTS:
        raise InputError(f"unknown measurement {name!r}; use one of {', '.join(MEASUREMENTS)}")
    try:
        return MEASUREMENTS[name](image_shape, **kwargs)
    except TypeError as e:
        raise InputError(f"measurement {name!r}: {e}") from None
