"""Random measurement models for AmbientGAN (Bora, Price, Dimakis, "AmbientGAN: Generative models from lossy
measurements", ICLR 2018).

A ``RandomMeasurement`` is a family ``A_θ``: every call draws fresh parameters ``θ`` for every sample
(``sample``) and applies them (``apply``), differentiably in the images, so a generator can be trained on
what its samples look like *after* measurement — the discriminator compares ``A_θ(G(z))`` with real
measurements ``A_θ'(x)`` and never sees a clean image. The paper's MNIST families:

- ``BlockPixels`` — each pixel dropped independently with probability ``p`` (the kept ones scaled by
  ``1 / (1 − p)``, as the paper's code does);
- ``BlurNoise`` — a fixed Gaussian blur (5×5, σ = 1) and fresh additive Gaussian noise;
- ``KeepPatch`` — everything outside a ``size`` × ``size`` patch at a random place set to zero;
- ``GaussianProjection`` — the image projected on a fresh Gaussian direction ``θ``, which the critic is
  shown with the projection (the paper's "Gaussian-Projection": one number per image, and θ).

The first three keep the image's shape (the library's critics apply unchanged); ``output_shape`` says what a
critic must take. ``unmeasure(y, params)`` is the paper's "unmeasure" baseline, which inverts each measurement
once (with the parameters it was taken with) and then trains a plain GAN on the estimates: biharmonic
inpainting of the missing pixels (block-pixels) and Wiener deconvolution (blur + noise), from
scikit-image (``pip install manifold-defense[ambient]``). ``measure_dataset`` measures a dataset once, as a user's
corrupted data would be. ``make_measurement(name, shape, **kw)`` builds one by name (``MEASUREMENTS``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from manifold_defense.operators import Blur
from manifold_defense.validation import InputError, check_images

__all__ = ["RandomMeasurement", "BlockPixels", "BlurNoise", "KeepPatch", "GaussianProjection", "MEASUREMENTS",
           "make_measurement", "parse_measurement", "measure_dataset", "save_measured", "load_measured"]


class RandomMeasurement(nn.Module):
    """``y = A_θ(x)`` with ``θ`` drawn per sample and call: ``forward(x, generator)`` = ``apply(x, sample(...))``.

    ``sample(n, generator, device)`` returns the parameters as tensors with a leading batch dimension;
    ``apply(x, params)`` is differentiable in ``x``; ``config()`` is what a checkpoint stores (a resumed
    training with another measurement is refused)."""

    name = "measurement"
    #: the parameters a user may know of each measured image (a pixel mask: which pixels were kept), saved with
    #: measured data and used by the 'unmeasure' baseline; the rest (noise) is never known
    known_params: tuple[str, ...] = ()

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

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one measurement (what a critic takes); the image's unless said otherwise."""
        return self.image_shape

    def config(self) -> dict[str, Any]:
        """The family and its settings (stored in a training checkpoint's configuration)."""
        return {"measurement": self.name, "image_shape": list(self.image_shape)}

    def unmeasure(self, y: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """An estimate of the images from their measurements ``y`` taken with ``params`` (the "unmeasure"
        baseline of Bora et al. 2018), clipped to [0, 1]. Not every family can be inverted."""
        raise InputError(f"measurement {self.name!r} has no inverse for the 'unmeasure' baseline")

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
    known_params = ("mask",)

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

    def unmeasure(self, y: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The kept pixels unscaled, the dropped ones filled by biharmonic inpainting."""
        self._check(y, params)
        return _inpaint(y * (1 - self.p), params["mask"])


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

    def unmeasure(self, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Wiener deconvolution with the known blur (the noise itself is not known to a user: ``params`` unused).
        Its regularisation 3 σ² (at least 1e-3) was the best of six values on 500 MNIST training images at
        σ = 0.1 and 0.2 (mean squared error .0107 and .0175 against .0228 and .0528 left blurred)."""
        restoration = _skimage_restoration()
        psf = self.blur.kernel[0, 0].detach().cpu().double().numpy()
        balance = max(3 * self.sigma ** 2, 1e-3)
        out = _per_image(y, lambda im, _: restoration.wiener(im, psf, balance, clip=False))
        return out.clamp(0, 1)


class KeepPatch(RandomMeasurement):
    """Only a ``size`` × ``size`` patch at a uniformly random place is kept; the rest is zero (``params``: the
    patch's ``mask``)."""

    name = "keep_patch"
    known_params = ("mask",)

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

    def unmeasure(self, y: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Nothing outside the patch is measured, so nothing there can be estimated: biharmonic inpainting from the
        patch's border was further from 8×8 digits than the zero-filled patch (mean squared error 1.56× on 64
        test digits, 4×4 patches). The paper has no 'unmeasure' baseline for keep-patch either."""
        raise InputError("keep_patch measures nothing outside its patch: there is no inverse for the 'unmeasure' "
                         "baseline (compare with 'ignore')")


class GaussianProjection(RandomMeasurement):
    """The image's projection on a direction ``θ`` ~ N(0, I) drawn afresh per sample, ``⟨θ, x⟩ / √n``, shown to
    the critic beside ``θ`` (Bora et al. 2018's Gaussian-Projection, where the discriminator sees θ too): the
    measurement is ``θ`` with one more channel holding the projection, so ``output_shape`` is (C + 1, H, W).
    ``params``: ``theta``. One number per image cannot be inverted: no 'unmeasure' baseline, and the 'ignore'
    baseline (a critic comparing measurements with images) does not apply."""

    name = "gaussian_projection"

    @property
    def output_shape(self) -> tuple[int, ...]:
        c, h, w = self.image_shape
        return (c + 1, h, w)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A standard Gaussian direction per sample, of the image's shape."""
        return {"theta": torch.randn(n, *self.image_shape, generator=generator).to(device)}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``θ`` and, as one more channel, ``⟨θ, x⟩ / √n`` at every pixel."""
        self._check(x, params)
        theta = params["theta"].to(x.dtype)
        n = theta[0].numel()
        proj = (theta * x).flatten(1).sum(1) / n ** 0.5
        _, h, w = self.image_shape
        return torch.cat([theta, proj[:, None, None, None].expand(-1, 1, h, w)], 1)


MEASUREMENTS = {c.name: c for c in (BlockPixels, BlurNoise, KeepPatch, GaussianProjection)}


def measure_dataset(measurement: RandomMeasurement, x: torch.Tensor, *, seed: int = 0,
                    batch_size: int = 1000) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every image measured once, with parameters drawn from ``seed`` (the same data for every method compared):
    ``(y, params)``, ``params`` per image as ``RandomMeasurement.sample`` gives them."""
    check_images(x, measurement.image_shape, name="x")
    gen = torch.Generator().manual_seed(seed)
    ys, ps = [], []
    with torch.no_grad():
        for xb in x.split(batch_size):
            params = measurement.sample(len(xb), gen, xb.device)
            ys.append(measurement.apply(xb, params))
            ps.append(params)
    return torch.cat(ys), {k: torch.cat([p[k] for p in ps]) for k in ps[0]} if ps else {}


def parse_measurement(spec: str, image_shape: Sequence[int]) -> RandomMeasurement:
    """``"block_pixels:p=0.8"``, ``"blur_noise:sigma=0.1"``, ``"keep_patch:size=14"``, ``"gaussian_projection"``
    → the measurement (numbers as ints where they are whole)."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"measurement setting {item!r} is not key=value (e.g. block_pixels:p=0.8)")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"measurement setting {key}={value!r} is not a number") from None
        kwargs[key.strip()] = int(number) if number.is_integer() and key.strip() == "size" else number
    return make_measurement(name.strip(), image_shape, **kwargs)


def _from_config(config: dict[str, Any]) -> RandomMeasurement:
    kwargs = {k: v for k, v in config.items() if k not in ("measurement", "image_shape")}
    return make_measurement(config.get("measurement", "?"), config.get("image_shape", ()), **kwargs)


def save_measured(path: str | os.PathLike, y: torch.Tensor, measurement: RandomMeasurement,
                  params: dict[str, torch.Tensor] | None = None) -> Path:
    """Measured data as a user holds it: ``.npz`` with ``measurements`` (N, *output_shape), the measurement's
    ``config`` (JSON) and, of ``params``, those a user could know per image (``known_params``: a pixel mask)."""
    from manifold_defense.checkpoint import _atomic_write

    path = Path(path)
    if tuple(y.shape[1:]) != tuple(measurement.output_shape):
        raise InputError(f"measurements of shape {tuple(y.shape[1:])} but {measurement.name!r} makes "
                         f"{tuple(measurement.output_shape)}")
    arrays = {"measurements": y.detach().cpu().float().numpy(),
              "config": np.array(json.dumps(measurement.config()))}
    for k in measurement.known_params:
        if params is not None and k in params:
            arrays[k] = params[k].detach().cpu().numpy().astype(np.uint8 if k == "mask" else np.float32)
    _atomic_write(path, "wb", lambda f: np.savez_compressed(f, **arrays))
    return path


def load_measured(path: str | os.PathLike) -> tuple[torch.Tensor, RandomMeasurement, dict[str, torch.Tensor]]:
    """``(measurements, measurement, known params)`` from a file of ``save_measured``; a file whose shapes
    disagree with its measurement is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"measured data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # not a zip, truncated ...
        raise InputError(f"{path} is not a readable .npz of measurements ({type(e).__name__}: {e})") from None
    missing = [k for k in ("measurements", "config") if k not in arrays]
    if missing:
        raise InputError(f"{path} lacks {' and '.join(missing)} (keys: measurements, config, and optional "
                         "per-image parameters such as mask)")
    try:
        config = json.loads(str(arrays["config"]))
    except json.JSONDecodeError:
        raise InputError(f"{path}: config is not the JSON of a measurement") from None
    measurement = _from_config(config)
    y = torch.from_numpy(arrays["measurements"]).float()
    if y.dim() != 1 + len(measurement.output_shape) or tuple(y.shape[1:]) != tuple(measurement.output_shape):
        raise InputError(f"{path}: measurements of shape {tuple(y.shape)} but {measurement.name!r} on "
                         f"{measurement.image_shape} images makes (N, {', '.join(map(str, measurement.output_shape))})")
    params = {}
    for k in measurement.known_params:
        if k in arrays:
            v = torch.from_numpy(arrays[k]).float()
            expected = (len(y), 1, *measurement.image_shape[1:])
            if tuple(v.shape) != expected:
                raise InputError(f"{path}: {k} of shape {tuple(v.shape)}, expected {expected} (one per measurement)")
            params[k] = v
    return y, measurement, params


def _skimage_restoration():
    try:
        from skimage import restoration
    except ImportError:
        raise InputError("the 'unmeasure' baseline needs scikit-image: pip install 'manifold-defense[ambient]'") \
            from None
    return restoration


def _per_image(y: torch.Tensor, fn, mask: torch.Tensor | None = None) -> torch.Tensor:
    # scikit-image restores one image at a time; this runs once over a dataset before training (~12 ms per
    # MNIST image for inpainting, 0.3 ms for Wiener), so a loop over images is the price of a well-kept solver
    arr = y.detach().cpu().double().numpy()
    known = None if mask is None else mask.detach().cpu().bool().expand_as(y).numpy()
    out = arr.copy()
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[i, c] = fn(arr[i, c], None if known is None else known[i, c])
    return torch.from_numpy(out).to(y.dtype).to(y.device)


def _inpaint(kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Biharmonic inpainting (scikit-image) of the pixels where ``mask`` is 0."""
    restoration = _skimage_restoration()

    def fill(im, known):
        if known.all():
            return im
        if not known.any():
            return im * 0
        return restoration.inpaint_biharmonic(im, ~known)

    return _per_image(kept, fill, mask).clamp(0, 1)


def make_measurement(name: str, image_shape: Sequence[int], **kwargs: Any) -> RandomMeasurement:
    """A random measurement model by name (``block_pixels``: ``p``; ``blur_noise``: ``sigma``, ``blur_sigma``,
    ``size``; ``keep_patch``: ``size``; ``gaussian_projection``); unknown names and settings are one-line errors."""
    if name not in MEASUREMENTS:
        raise InputError(f"unknown measurement {name!r}; use one of {', '.join(MEASUREMENTS)}")
    try:
        return MEASUREMENTS[name](image_shape, **kwargs)
    except TypeError as e:
        raise InputError(f"measurement {name!r}: {e}") from None
