"""Variational auto-encoders whose decoder is the generator (Kingma & Welling 2014).

``VAE(image_shape=(1, 28, 28), latent_dim=20, hidden=(500, 500))`` is the MNIST model of CSGM
(Bora et al., ICML 2017): encoder 784-500-500-(20 mean, 20 log-variance), decoder 20-500-500-784,
softplus activations, sigmoid output, Xavier initialisation, summed Bernoulli cross-entropy + KL.
The encoder is kept: it gives warm starts for inversion.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.generators.base import SequentialGenerator, image_numel

__all__ = ["VAE"]


class VAE(SequentialGenerator):
    """MLP VAE; ``forward(z)`` decodes, ``encode(x)`` returns the posterior mean."""

    arch_name = "vae-mlp"

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
    ) -> None:
        super().__init__()
        if latent_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError("latent_dim and hidden widths must be positive")
        self.config = {"image_shape": list(image_shape), "latent_dim": int(latent_dim), "hidden": list(hidden)}
        self.latent_dim = int(latent_dim)
        self.output_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        n = image_numel(image_shape)
        enc: list[nn.Module] = [nn.Flatten()]
        width = n
        for h in hidden:
            enc += [nn.Linear(width, h), nn.Softplus()]
            width = h
        enc.append(nn.Linear(width, 2 * latent_dim))
        self.encoder = nn.Sequential(*enc)
        dec_widths = [latent_dim, *reversed(list(hidden))]
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Linear(a, b), nn.Softplus()) for a, b in zip(dec_widths[:-1], dec_widths[1:])
        ]
        blocks.append(nn.Sequential(nn.Linear(dec_widths[-1], n), nn.Sigmoid(), nn.Unflatten(1, self.output_shape)))
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_variance)`` of q(z | x)."""
        h = self.encoder(x)
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of q(z | x): a warm start for inversion."""
        self._check_input_images(x)
        return self.posterior(x)[0]

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid decoder output (numerically stable cross-entropy)."""
        for block in self.blocks[:-1]:
            z = block(z)
        return self.blocks[-1][0](z)

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per sample, averaged over the batch: summed Bernoulli cross-entropy + KL."""
        mu, logvar = self.posterior(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        rec = F.binary_cross_entropy_with_logits(self.logits(z), x.flatten(1), reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + kl) / x.shape[0]
