"""Input checks shared by every public entry point.

Each check raises ``InputError`` (a ``ValueError``) with a message that names the argument and
what is wrong with it, so a bad batch fails loudly instead of producing silent garbage.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = [
    "InputError",
    "model_dtype",
    "check_images",
    "check_labels",
    "check_latents",
    "check_compatible",
]


class InputError(ValueError):
    """A tensor or argument given to the library does not meet its documented contract."""


def model_dtype(model: object) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter (None: no parameters, or not a module)."""
    if not isinstance(model, nn.Module):
        return None
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_images(
    x: torch.Tensor,
    shape: Sequence[int] | None = None,
    *,
    name: str = "x",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    tol: float = 1e-5,
    allow_empty: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Check a batch of images: a 4-D ``(N, C, H, W)`` tensor, finite, within ``bounds``.

    ``shape`` is the expected ``(C, H, W)``; ``bounds=None`` skips the range check; ``dtype``: the model's
    (its weights'), which the images must match. Returns ``x`` unchanged so the call can be chained.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise InputError(f"{name} must be a 4-D batch (N, C, H, W), got shape {_shape_str(x.shape)}{hint}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        what = "channel count" if x.shape[2:] == tuple(shape[1:]) else "image shape"
        raise InputError(
            f"{name} has wrong {what}: expected (N, {', '.join(map(str, shape))}), "
            f"got {_shape_str(x.shape)}"
        )
    if x.shape[0] == 0:
        if allow_empty:
            return x
        raise InputError(f"{name} is an empty batch (N = 0)")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        cast = {torch.float32: ".float()", torch.float64: ".double()", torch.float16: ".half()"}.get(dtype, "")
        raise InputError(f"{name} has dtype {str(x.dtype).replace('torch.', '')} but the model's weights are "
                         f"{str(dtype).replace('torch.', '')}: convert the images ({name}{cast}) or the model")
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} contains NaN or inf values (in {n_bad} of {x.shape[0]} samples)")
    if bounds is not None:
        lo, hi = bounds
        xmin, xmax = float(x.detach().min()), float(x.detach().max())
        if xmin < lo - tol or xmax > hi + tol:
            raise InputError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the model's bounds [{lo}, {hi}]"
                + (" (images must be scaled to [0, 1], not 0-255)" if xmax > 1.5 else "")
            )
    return x


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, *, name: str = "y") -> torch.Tensor:
    """Check integer class labels: shape ``(n,)`` and values in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) to match the batch, got {_shape_str(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if num_classes is not None and n > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{name} has labels outside [0, {num_classes}): min {int(y.min())}, max {int(y.max())}")
    return y


def check_latents(z: torch.Tensor, latent_dim: int, *, name: str = "z") -> torch.Tensor:
    """Check a batch of latent codes of shape ``(N, latent_dim)`` with finite values."""
    if not isinstance(z, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise InputError(f"{name} must have shape (N, {latent_dim}), got {_shape_str(z.shape)}")
    if z.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (N = 0)")
    if not bool(torch.isfinite(z).all()):
        raise InputError(f"{name} contains NaN or inf values")
    return z


def check_compatible(generator: nn.Module, classifier: nn.Module) -> None:
    """Check that ``generator`` produces images of the shape ``classifier`` takes."""
    g_shape = tuple(getattr(generator, "output_shape", ()))
    c_shape = tuple(getattr(classifier, "input_shape", ()))
    if not g_shape:
        raise InputError(f"{type(generator).__name__} has no output_shape; is it a manifold_defense generator?")
    if not c_shape:
        raise InputError(f"{type(classifier).__name__} has no input_shape; set classifier.input_shape = (C, H, W)")
    if g_shape != c_shape:
        raise InputError(
            f"generator/classifier shape mismatch: {type(generator).__name__} outputs images of shape "
            f"{_shape_str(g_shape)} but {type(classifier).__name__} expects {_shape_str(c_shape)}"
        )
