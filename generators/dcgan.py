"""The Defense-GAN MNIST generator and its WGAN-GP critic (Samangouei et al., ICLR 2018).

Generator: Linear 128→4096 → ReLU → 4×4×256 → 5×5 transposed conv to 128 channels (8×8, cropped to
7×7) → ReLU → to 64 (14×14) → ReLU → to 1 (28×28) → sigmoid. The critic mirrors it with strided
5×5 convolutions and LeakyReLU, no normalisation (the gradient penalty is per sample).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from manifold_defense.generators.base import SequentialGenerator

__all__ = ["DefenseGANGenerator", "WGANCritic"]


class _Crop(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.size, : self.size]


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    # kernel 5, stride 2, "same" padding: doubles the spatial size exactly.
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class DefenseGANGenerator(SequentialGenerator):
    """Conv generator for 28×28 images (``dim`` = 64 reproduces the paper)."""

    arch_name = "defensegan-generator"

    def __init__(self, latent_dim: int = 128, dim: int = 64, channels: int = 1, batchnorm: bool = False) -> None:
        super().__init__()
        self.config = {"latent_dim": int(latent_dim), "dim": int(dim), "channels": int(channels)}
        if batchnorm:  # only recorded when set: earlier checkpoints' configs stay valid
            self.config["batchnorm"] = True
        self.latent_dim = int(latent_dim)
        self.output_shape = (int(channels), 28, 28)
        # batchnorm=True: DCGAN's batch normalisation after every hidden layer (Radford et al. 2016), which
        # the hinge-loss GAN needs on this generator; in eval mode it is a fixed per-channel affine map.
        bn1 = [nn.BatchNorm1d(4 * 4 * 4 * dim)] if batchnorm else []
        bn2 = [nn.BatchNorm2d(2 * dim)] if batchnorm else []
        bn3 = [nn.BatchNorm2d(dim)] if batchnorm else []
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(latent_dim, 4 * 4 * 4 * dim), *bn1, nn.ReLU(), nn.Unflatten(1, (4 * dim, 4, 4))),
                nn.Sequential(_up(4 * dim, 2 * dim), _Crop(7), *bn2, nn.ReLU()),
                nn.Sequential(_up(2 * dim, dim), *bn3, nn.ReLU()),
                nn.Sequential(_up(dim, channels), nn.Sigmoid()),
            ]
        )


class WGANCritic(nn.Module):
    """Critic for 28×28 images: three stride-2 5×5 convolutions then a linear score.

    ``spectral_norm=True`` normalises every layer's weight by its largest singular value (Miyato et al.
    2018), the critic of the hinge-loss GAN; without it, the WGAN-GP critic of Defense-GAN.
    """

    arch_name = "wgan-critic"

    def __init__(self, dim: int = 64, channels: int = 1, image_size: Sequence[int] = (28, 28),
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.config = {"dim": int(dim), "channels": int(channels), "image_size": list(image_size)}
        if spectral_norm:  # only recorded when set: earlier checkpoints' configs stay valid
            self.config["spectral_norm"] = True
        h, w = image_size
        for _ in range(3):
            h, w = (h + 1) // 2, (w + 1) // 2
        self.net = nn.Sequential(
            nn.Conv2d(channels, dim, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(dim, 2 * dim, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * dim, 4 * dim, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * dim * h * w, 1),
        )
        if spectral_norm:
            for layer in self.net:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).squeeze(1)
