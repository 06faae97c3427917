"""Random ReLU networks: the generative model of the recovery theory (Hand & Voroninski 2018).

``G(z) = ReLU(W_d … ReLU(W_1 z))`` with ``W_i ~ N(0, 1/n_i)`` (``n_i`` the output width of layer i)
and no biases. Outputs are non-negative vectors, shaped ``(1, 1, n_d)`` to fit the image interface;
they are not confined to [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from manifold_defense.generators.base import SequentialGenerator

__all__ = ["RandomReLUGenerator"]


class RandomReLUGenerator(SequentialGenerator):
    """``widths = (k, n_1, …, n_d)``; seeded Gaussian weights, frozen (no gradients to the weights)."""

    arch_name = "random-relu"

    def __init__(self, widths: Sequence[int] = (10, 250, 150, 500), seed: int = 0) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must list the latent size and at least one layer width, got {widths}")
        self.config = {"widths": widths, "seed": int(seed)}
        self.latent_dim = widths[0]
        self.output_shape = (1, 1, widths[-1])
        g = torch.Generator().manual_seed(seed)
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            lin = nn.Linear(a, b, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(b, a, generator=g) / math.sqrt(b))
            lin.weight.requires_grad_(False)
            blocks.append(nn.Sequential(lin, nn.ReLU()))
        blocks[-1].append(nn.Unflatten(1, self.output_shape))
        self.blocks = nn.ModuleList(blocks)
