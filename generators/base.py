"""The generator interface every inversion, defense and attack in the library relies on."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from manifold_defense.validation import InputError, check_images, check_latents

__all__ = ["SequentialGenerator", "Chain", "image_numel"]


class Chain(nn.Sequential):
    """A run of generator blocks; shares parameters with the generator it was split from."""


class SequentialGenerator(nn.Module):
    """A map ``G: R^latent_dim → [0, 1]^output_shape`` built as a chain of blocks: the base class of the
    library's generators (it meets the ``Generator`` and
    ``Splittable`` protocols).

    Subclasses fill ``self.blocks`` (an ``nn.ModuleList``) and set ``latent_dim`` and
    ``output_shape``. ``split(i)`` cuts the chain after block ``i`` into ``(G1, G2)`` with
    ``G2(G1(z)) == G(z)``; this is what intermediate layer optimisation (Daras et al. 2021) searches
    over. Generators with an encoder add ``encode(x)`` (``Encoded``).
    """

    latent_dim: int
    output_shape: tuple[int, int, int]
    blocks: nn.ModuleList

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            check_latents(z, self.latent_dim)
        for block in self.blocks:
            z = block(z)
        return z

    @property
    def num_splits(self) -> int:
        """Number of blocks; valid split points are ``0 … num_splits``."""
        return len(self.blocks)

    def split(self, i: int) -> tuple[Chain, Chain]:
        """``(G1, G2)`` with ``G1`` the first ``i`` blocks and ``G2`` the rest (either may be empty = identity)."""
        if not 0 <= i <= self.num_splits:
            raise InputError(f"split index must be in [0, {self.num_splits}], got {i}")
        return Chain(*self.blocks[:i]), Chain(*self.blocks[i:])

    def segment(self, start: int, stop: int) -> Chain:
        """Blocks ``start … stop − 1`` (maps the representation after block ``start`` to the one after ``stop``)."""
        if not 0 <= start <= stop <= self.num_splits:
            raise InputError(f"segment needs 0 <= start <= stop <= {self.num_splits}, got {start}, {stop}")
        return Chain(*self.blocks[start:stop])

    def intermediate_shape(self, i: int) -> tuple[int, ...]:
        """Shape (without batch) of the representation after block ``i``."""
        g1, _ = self.split(i)
        p = next(self.parameters())
        with torch.no_grad():
            return tuple(g1(torch.zeros(1, self.latent_dim, device=p.device, dtype=p.dtype)).shape[1:])

    def sample_latent(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``n`` latent codes from the prior ``N(0, I)``; pass a seeded ``torch.Generator`` for reproducibility."""
        p = next(self.parameters())
        device = device if device is not None else (generator.device if generator is not None else p.device)
        return torch.randn(n, self.latent_dim, generator=generator, device=device, dtype=dtype or p.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random images from the model."""
        with torch.inference_mode():
            return self(self.sample_latent(n, generator))

    def _check_input_images(self, x: torch.Tensor) -> torch.Tensor:
        return check_images(x, self.output_shape)


def image_numel(shape: Sequence[int]) -> int:
    """Number of entries of one image of ``shape``."""
    n = 1
    for s in shape:
        n *= int(s)
    return n
