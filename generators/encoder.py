"""Encoders for generators that have none (GANs), for warm-starting the projection.

Invert-and-Defend (Lin, Balaji, Samangouei, Chellappa 2019) trains an encoder ``E`` for a fixed GAN
generator ``G`` so that ``G(E(x)) ≈ x``, and starts the latent search from ``E(x)``; a few descent
steps then reach the accuracy of many random restarts. ``EncodedGenerator`` is a generator with
such an encoder attached (same ``blocks``, so its generator weights load from the bare generator's
checkpoint and ILO's ``split`` works unchanged); ``train_encoder`` fits the encoder with the
generator frozen, on a latent-space loss ``‖E(G(z)) − z‖²`` over prior samples plus an image-space
loss ``‖G(E(x)) − x‖²`` over real images.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from manifold_defense.checkpoint import train_epochs
from manifold_defense.generators.base import SequentialGenerator
from manifold_defense.generators.cifar import DCGANGenerator
from manifold_defense.generators.dcgan import DefenseGANGenerator
from manifold_defense.generators.random_relu import RandomReLUGenerator
from manifold_defense.generators.vae import VAE
from manifold_defense.generators.train import reconstruction_mse
from manifold_defense.utils import minibatches, seed_everything
from manifold_defense.validation import InputError, check_images

__all__ = ["LatentEncoder", "EncodedGenerator", "train_encoder", "GENERATOR_ARCHITECTURES"]

#: generator architectures an encoder can be trained for (name → class)
GENERATOR_ARCHITECTURES: dict[str, type[SequentialGenerator]] = {
    cls.arch_name: cls for cls in (DefenseGANGenerator, VAE, RandomReLUGenerator, DCGANGenerator)
}


class LatentEncoder(nn.Module):
    """Conv encoder ``[0, 1]^{c×h×w} → R^latent_dim``: three stride-2 4×4 convolutions (``dim``, 2·``dim``,
    4·``dim`` channels, LeakyReLU 0.2) and a linear layer — the shape of Defense-GAN's critic."""

    arch_name = "latent-encoder"

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 128, dim: int = 64) -> None:
        super().__init__()
        if latent_dim < 1 or dim < 1 or len(image_shape) != 3:
            raise InputError(f"bad encoder shape: image_shape={image_shape}, latent_dim={latent_dim}, dim={dim}")
        self.config = {"image_shape": [int(s) for s in image_shape], "latent_dim": int(latent_dim), "dim": int(dim)}
        c, h, w = self.config["image_shape"]
        act = nn.LeakyReLU(0.2)
        self.features = nn.Sequential(
            nn.Conv2d(c, dim, 4, 2, 1), act, nn.Conv2d(dim, 2 * dim, 4, 2, 1), act,
            nn.Conv2d(2 * dim, 4 * dim, 4, 2, 1), act, nn.Flatten(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.head = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class EncodedGenerator(SequentialGenerator):
    """A generator (any registered ``generator_arch``) with a trained ``LatentEncoder``.

    ``forward`` is the generator's; ``encode`` is the encoder's. Build one from a trained generator with
    ``from_generator``, then fit the encoder with ``train_encoder``.
    """

    arch_name = "encoded-generator"

    def __init__(self, generator_arch: str = "defensegan-generator", generator_config: dict | None = None,
                 encoder_dim: int = 64) -> None:
        super().__init__()
        if generator_arch not in GENERATOR_ARCHITECTURES:
            raise InputError(f"{generator_arch!r} is not a generator architecture; known: "
                             f"{', '.join(sorted(GENERATOR_ARCHITECTURES))}")
        base = GENERATOR_ARCHITECTURES[generator_arch](**(generator_config or {}))
        self.config = {"generator_arch": generator_arch, "generator_config": dict(base.config),
                       "encoder_dim": int(encoder_dim)}
        self.latent_dim, self.output_shape = base.latent_dim, tuple(base.output_shape)
        self.blocks = base.blocks  # same parameter names as the bare generator: its checkpoint loads as is
        self.encoder = LatentEncoder(self.output_shape, self.latent_dim, encoder_dim)

    @classmethod
    def from_generator(cls, generator: SequentialGenerator, encoder_dim: int = 64) -> "EncodedGenerator":
        """Wrap a trained generator (its weights are copied; the encoder is untrained)."""
        arch = getattr(generator, "arch_name", None)
        if arch is None or not hasattr(generator, "config"):
            raise InputError(f"{type(generator).__name__} is not a registered generator architecture")
        if isinstance(generator, EncodedGenerator):
            raise InputError("this generator already has an encoder")
        if arch not in GENERATOR_ARCHITECTURES:
            raise InputError(f"{type(generator).__name__} ({arch}) cannot carry a trained encoder here; known generator "
                             f"architectures: {', '.join(sorted(GENERATOR_ARCHITECTURES))}")
        out = cls(arch, generator.config, encoder_dim)
        out.blocks.load_state_dict(generator.blocks.state_dict())
        p = next(generator.parameters())
        return out.to(device=p.device, dtype=p.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The trained encoder's latent codes for images ``x``."""
        return self.encoder(self._check_input_images(x))


def train_encoder(
    model: EncodedGenerator,
    x_train: torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    image_weight: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    x_test: torch.Tensor | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Fit ``model.encoder`` with the generator frozen (Invert-and-Defend, Lin et al. 2019): Adam on
    ``mean ‖E(G(z)) − z‖² / k + image_weight · mean ‖G(E(x)) − x‖²`` (per latent entry / per pixel),
    ``z`` from the prior and ``x`` a minibatch of real images. Checkpointed and resumable per epoch.

    ``noise`` > 0 trains the encoder for off-manifold inputs too: half of each real minibatch is replaced
    by ``clip(x + s·σ, 0, 1)`` with random signs ``σ`` and a per-image size ``s ~ U(0, noise)`` (an
    L∞ perturbation like FGSM's, but random), and the image loss asks ``G(E(x̃))`` to fit that perturbed
    ``x̃`` — the projection's own objective — so the encoder's start is close to the projection of a
    perturbed input, not of the clean image behind it."""
    if not isinstance(model, EncodedGenerator):
        raise InputError(f"train_encoder needs an EncodedGenerator, got {type(model).__name__}")
    check_images(x_train, model.output_shape, name="x_train")
    if image_weight < 0:
        raise InputError(f"image_weight must be >= 0, got {image_weight}")
    if not 0 <= noise <= 1:
        raise InputError(f"noise must be in [0, 1], got {noise}")
    if noise > 0 and not image_weight:
        raise InputError("noise > 0 needs image_weight > 0 (the perturbed images enter the image loss only)")
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    x_train = x_train.to(device)
    for prm in model.blocks.parameters():
        prm.requires_grad_(False)
    opt = torch.optim.Adam(model.encoder.parameters(), lr=lr)

    def epoch_fn(epoch: int) -> dict[str, float]:
        model.train()
        model.blocks.eval()  # the generator is frozen, batch-norm statistics included: only the encoder trains
        tot_z, tot_x, count = 0.0, 0.0, 0
        for idx in minibatches(len(x_train), batch_size, gen):
            xb = x_train[idx.to(device)]
            z = torch.randn(len(idx), model.latent_dim, generator=gen).to(device)
            if noise > 0:
                h = len(idx) // 2
                size = torch.rand(h, 1, 1, 1, generator=gen).to(device) * noise
                signs = torch.randint(0, 2, xb[:h].shape, generator=gen).to(device) * 2.0 - 1.0
                xb = torch.cat([(xb[:h] + size * signs).clamp(0, 1), xb[h:]])
            with torch.no_grad():
                fake = model(z)
            loss_z = (model.encoder(fake) - z).pow(2).mean()
            loss_x = (model(model.encoder(xb)) - xb).pow(2).mean() if image_weight else torch.zeros((), device=device)
            loss = loss_z + image_weight * loss_x
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_z += float(loss_z.detach()) * len(idx)
            tot_x += float(loss_x.detach()) * len(idx)
            count += len(idx)
        model.eval()
        return {"latent_mse": tot_z / count, "image_mse": tot_x / count}

    def finalize() -> dict[str, float]:
        model.eval()
        out = {"train_encoder_recon_mse": reconstruction_mse(model, x_train[:5000], batch_size=500)}
        if x_test is not None:
            out["test_encoder_recon_mse"] = reconstruction_mse(model, x_test, batch_size=500)
        return out

    config = {"trainer": "encoder", "batch_size": batch_size, "lr": lr, "image_weight": image_weight, "seed": seed,
              "n_train": len(x_train), "noise": noise}
    return train_epochs(
        path=path, modules={"model": model}, optimizers={"adam": opt}, epochs=epochs, epoch_fn=epoch_fn,
        config=config, metadata=metadata, generator=gen, finalize=finalize, desc="encoder", progress=progress,
    )
