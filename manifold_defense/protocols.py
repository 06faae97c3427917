"""What the library asks of the models it is given, as ``typing.Protocol`` s.

Everything that inverts, defends or attacks checks these with ``isinstance`` (they are
``runtime_checkable``) instead of probing attributes one by one:

- ``Generator`` — ``G: R^latent_dim → [0, 1]^output_shape`` with a latent prior to sample from;
- ``Splittable`` — ``split(i) → (G1, G2)`` with ``G2(G1(z)) == G(z)`` and ``segment(i, j)`` (the
  blocks between two split points), for intermediate layer optimisation (Daras et al. 2021);
- ``Encoded`` — ``encode(x) → z``, a warm start for inversion (a VAE's encoder, or one trained for
  a GAN as in Lin et al. 2019);
- ``ClassConditional`` — ``G(z, y)``: one manifold per class (Stutz, Hein, Schiele 2019);
  ``condition(c)`` returns class ``c``'s generator, a plain ``Generator``.

A runtime check sees only that the members exist; their meaning is the contract written here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Generator", "Splittable", "Encoded", "ClassConditional", "describe"]


@runtime_checkable
class Generator(Protocol):
    """A generative model: ``forward(z)`` maps ``(N, latent_dim)`` latents to ``(N, *output_shape)`` images in [0, 1]."""

    latent_dim: int
    output_shape: tuple[int, ...]

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent codes from the prior."""

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``G(z)``."""


@runtime_checkable
class Splittable(Protocol):
    """A generator that is a chain of blocks: ``split(i) → (G1, G2)`` for ``i`` in ``0 … num_splits``."""

    @property
    def num_splits(self) -> int:
        """How many blocks; valid split points are ``0 … num_splits``."""

    def split(self, i: int) -> tuple[nn.Module, nn.Module]:
        """The first ``i`` blocks and the rest, with ``G2(G1(z)) == G(z)``."""

    def segment(self, start: int, stop: int) -> nn.Module:
        """Blocks ``start … stop − 1``: ``split(j)[0] == segment(i, j) ∘ split(i)[0]``."""


@runtime_checkable
class Encoded(Protocol):
    """A generator with an encoder: ``encode(x) → z`` with ``G(encode(x)) ≈ x``."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes for images ``x``."""


@runtime_checkable
class ClassConditional(Protocol):
    """A class-conditional generator ``G(z, y)`` over ``num_classes`` classes."""

    num_classes: int

    def condition(self, label: int) -> Generator:
        """The generator ``z ↦ G(z, label)`` of one class (a plain ``Generator``)."""


def describe(model: object) -> str:
    """Which of the protocols ``model`` meets, for error messages (``"Generator, Encoded"`` or ``"none"``)."""
    met = [p.__name__ for p in (Generator, Splittable, Encoded, ClassConditional) if isinstance(model, p)]
    return ", ".join(met) or "none"
