"""DCGAN for 32×32 colour images (Radford, Metz, Chintala, ICLR 2016), the CIFAR-10 format.

Generator: Linear ``latent_dim`` → 4×4×4·``dim`` (batch norm, ReLU) → three stride-2 4×4 transposed
convolutions to 8×8×2·``dim``, 16×16×``dim`` (batch norm, ReLU) and 32×32×``channels`` (sigmoid, so
images are in [0, 1] like every generator here). Critic: three stride-2 4×4 convolutions with LeakyReLU
0.2 and a linear score, no normalisation (it suits WGAN-GP's per-sample gradient penalty and the
hinge loss alike). Pair the generator with ``EncodedGenerator``
for encoder warm starts; its ``LatentEncoder`` takes 32×32 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_defense.generators.base import SequentialGenerator
from manifold_defense.validation import InputError

__all__ = ["DCGANGenerator", "DCGANCritic"]


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)  # doubles the spatial size


class DCGANGenerator(SequentialGenerator):
    """DCGAN generator for ``(channels, 32, 32)`` images; blocks: the linear stem and each upsampling stage."""

    arch_name = "dcgan32-generator"

    def __init__(self, latent_dim: int = 128, dim: int = 64, channels: int = 3) -> None:
        super().__init__()
        if latent_dim < 1 or dim < 1 or channels < 1:
            raise InputError(f"latent_dim, dim and channels must be >= 1, got {latent_dim}, {dim}, {channels}")
        self.config = {"latent_dim": int(latent_dim), "dim": int(dim), "channels": int(channels)}
        self.latent_dim = int(latent_dim)
        self.output_shape = (int(channels), 32, 32)
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(latent_dim, 16 * 4 * dim), nn.Unflatten(1, (4 * dim, 4, 4)),
                          nn.BatchNorm2d(4 * dim), nn.ReLU()),
            nn.Sequential(_up(4 * dim, 2 * dim), nn.BatchNorm2d(2 * dim), nn.ReLU()),
            nn.Sequential(_up(2 * dim, dim), nn.BatchNorm2d(dim), nn.ReLU()),
            nn.Sequential(_up(dim, channels), nn.Sigmoid()),
        ])


class DCGANCritic(nn.Module):
    """Critic (discriminator) for ``(channels, 32, 32)`` images: a score per image."""

    arch_name = "dcgan32-critic"

    def __init__(self, dim: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.config = {"dim": int(dim), "channels": int(channels)}
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, dim, 4, 2, 1), act, nn.Conv2d(dim, 2 * dim, 4, 2, 1), act,
            nn.Conv2d(2 * dim, 4 * dim, 4, 2, 1), act, nn.Flatten(), nn.Linear(4 * dim * 16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).squeeze(1)
