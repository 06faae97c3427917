"""Class-conditional generators: one generative model per class.

``ClassVAEs`` — one MLP VAE per class, the class-specific generators of Stutz, Hein, Schiele,
"Disentangling Adversarial Robustness and Generalization", CVPR 2019 (they use VAE-GANs; a VAE keeps the
encoder the projection starts from and trains in minutes on a CPU). Each VAE only ever sees images of its
own class, so an on-manifold perturbation of a "3" stays in the range of the "3" model: the label holds by
construction, which a conditional VAE/GAN (one decoder that may ignore its label input) does not promise.

``condition(c)`` returns class ``c``'s VAE, a plain ``Generator``, so every
inversion, projection and attack of the library runs on it unchanged; the class-conditional attacks
(``manifold_defense.attacks.class_conditional``) group a batch by label and run once per class.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from manifold_defense.generators.vae import VAE
from manifold_defense.validation import InputError, check_images, check_latents

__all__ = ["ClassVAEs", "class_groups"]


def class_groups(labels: torch.Tensor, num_classes: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(class, row indices)`` for every class present in ``labels`` (a loop over classes, not samples)."""
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"labels must be a 1-d integer tensor, got shape {tuple(labels.shape)} and {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise InputError(f"class index {int(bad[0])} is outside the generator's {num_classes} classes "
                         f"(0 … {num_classes - 1})")
    for c in labels.unique().tolist():
        yield int(c), (labels == c).nonzero().squeeze(1)


class ClassVAEs(nn.Module):
    """``num_classes`` independent ``VAE`` s; ``G(z, y) = VAE_y(z)``.

    It meets ``ClassConditional`` and deliberately not
    ``Generator`` (no unconditional ``sample_latent``): passing it where
    one range is expected is an error that says to call ``condition(label)``.
    """

    arch_name = "class-vaes"

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 10,
                 hidden: Sequence[int] = (256, 256), num_classes: int = 10) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"a class-conditional generator needs num_classes >= 2, got {num_classes}")
        self.config = {"image_shape": list(image_shape), "latent_dim": int(latent_dim), "hidden": list(hidden),
                       "num_classes": int(num_classes)}
        self.vaes = nn.ModuleList(VAE(image_shape, latent_dim, hidden) for _ in range(num_classes))
        self.num_classes, self.latent_dim = int(num_classes), int(latent_dim)
        self.output_shape = tuple(int(s) for s in image_shape)

    def condition(self, label: int | torch.Tensor) -> VAE:
        """Class ``label``'s generator (shares its weights with this module)."""
        if isinstance(label, torch.Tensor):
            if label.numel() != 1:
                raise InputError("condition() takes one class; group a batch by label with class_groups()")
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int):
            raise InputError(f"class must be an integer, got {label!r}")
        if not 0 <= label < self.num_classes:
            raise InputError(f"class index {label} is outside the generator's {self.num_classes} classes "
                             f"(0 … {self.num_classes - 1})")
        return self.vaes[label]

    def _rows(self, n: int, labels: torch.Tensor) -> torch.Tensor:
        if len(labels) != n:
            raise InputError(f"got {n} samples but {len(labels)} labels")
        return labels.to(next(self.parameters()).device)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images ``G(z_i, labels_i)``."""
        check_latents(z, self.latent_dim)
        labels = self._rows(len(z), labels)
        out = z.new_empty(len(z), *self.output_shape)
        for c, rows in class_groups(labels, self.num_classes):
            out[rows] = self.vaes[c](z[rows])
        return out

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Posterior means under each sample's own class model."""
        check_images(x, self.output_shape)
        labels = self._rows(len(x), labels)
        out = x.new_empty(len(x), self.latent_dim)
        for c, rows in class_groups(labels, self.num_classes):
            out[rows] = self.vaes[c].encode(x[rows])
        return out

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random image of each requested class."""
        p = next(self.parameters())
        z = torch.randn(len(labels), self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else p.device).to(p.device)
        with torch.inference_mode():
            return self(z, labels)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per sample, each under its own class's VAE, averaged over the batch."""
        labels = self._rows(len(x), labels)
        total = x.new_zeros(())
        for c, rows in class_groups(labels, self.num_classes):
            total = total + self.vaes[c].loss(x[rows], generator) * len(rows)
        return total / len(x)
