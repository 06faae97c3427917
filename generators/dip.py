"""An untrained convolutional generator for the Deep Image Prior (Ulyanov, Vedaldi, Lempitsky, CVPR 2018).

DCGAN-like and small, as in Van Veen et al., "Compressed Sensing with Deep Image Prior and Learned
Regularization" (2018): a fixed random input ``z0`` of shape ``(latent_channels, s, s)`` followed
by ``upsamples`` stages of [nearest ×2 upsampling, 3×3 convolution, instance normalisation with an
affine map, ReLU] and a final 3×3 convolution with a sigmoid. ``s = H / 2**upsamples`` (7 for 28×28
images, 2 for 8×8). It is never trained on data: ``manifold_defense.inversion.dip`` fits its
weights to one image's measurements.

Instance normalisation (GroupNorm with one group per channel) stands in for the batch normalisation
of the original DIP networks: each image gets its own network, run on a batch of one, and batch
statistics with running buffers do not batch across networks with ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from manifold_defense.validation import InputError

__all__ = ["DeepImagePrior"]


def _default_upsamples(size: int) -> int:
    for u in (3, 2, 1):
        if size % 2**u == 0 and size // 2**u >= 2:
            return u
    return 0


class DeepImagePrior(nn.Module):
    """Untrained DIP network ``G(z0; w)`` for ``output_shape`` images (see the module docstring).

    ``flat_init(n, generator)`` draws ``n`` independent weight vectors with PyTorch's default
    initialisation; ``unflatten`` / ``functional_forward`` map a flat weight vector back to
    the network, which is how the inversion core batches one network per image.
    """

    arch_name = "deep-image-prior"

    def __init__(self, output_shape: Sequence[int] = (1, 28, 28), channels: int = 32, latent_channels: int = 16,
                 upsamples: int | None = None, seed: int = 0) -> None:
        super().__init__()
        c, h, w = (int(v) for v in output_shape)
        if h != w:
            raise InputError(f"DeepImagePrior makes square images, got output_shape {tuple(output_shape)}")
        u = _default_upsamples(h) if upsamples is None else int(upsamples)
        if u < 0 or h % 2**u or h // 2**u < 1:
            raise InputError(f"image size {h} is not divisible by 2**upsamples = {2 ** u}")
        if channels < 1 or latent_channels < 1:
            raise InputError("channels and latent_channels must be >= 1")
        self.config = {"output_shape": [c, h, w], "channels": int(channels), "latent_channels": int(latent_channels),
                       "upsamples": u, "seed": int(seed)}
        self.output_shape = (c, h, w)
        s = h // 2**u
        # The fixed random input (a buffer: saved with the model, never optimised).
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("z0", torch.rand(1, latent_channels, s, s, generator=g) * 0.1)
        layers: list[nn.Module] = []
        cin = latent_channels
        for _ in range(u):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, channels, 3, padding=1),
                       nn.GroupNorm(channels, channels), nn.ReLU()]
            cin = channels
        layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.GroupNorm(channels, channels), nn.ReLU(),
                   nn.Conv2d(channels, c, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self._names = [name for name, _ in self.named_parameters()]
        self._shapes = [p.shape for _, p in self.named_parameters()]

    @property
    def num_weights(self) -> int:
        return sum(math.prod(s) for s in self._shapes)

    def forward(self, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.z0 if z is None else z)

    def flat_weights(self) -> torch.Tensor:
        """This network's weights as one flat vector (the layout ``unflatten`` reads)."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{parameter name: tensor}`` views of one flat weight vector."""
        out, i = {}, 0
        for name, shape in zip(self._names, self._shapes):
            k = math.prod(shape)
            out[name] = w[i : i + k].view(shape)
            i += k
        return out

    def functional_forward(self, w: torch.Tensor) -> torch.Tensor:
        """The image made by this network with the flat weights ``w`` (``(P,)`` → ``(C, H, W)``)."""
        return torch.func.functional_call(self, self.unflatten(w), (self.z0,))[0]

    def flat_init(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, P)`` independent draws of PyTorch's default initialisation (bounds 1/√fan_in for convolutions;
        ones and zeros for the normalisation's affine map), from ``generator``."""
        p = next(self.parameters())
        cols = []
        for name, shape in zip(self._names, self._shapes):
            k = math.prod(shape)
            if name.endswith("weight") and len(shape) == 4:
                bound = 1.0 / math.sqrt(math.prod(shape[1:]))
            elif name.endswith("bias") and self._is_conv_bias(name):
                wshape = self._shapes[self._names.index(name[: -len("bias")] + "weight")]
                bound = 1.0 / math.sqrt(math.prod(wshape[1:]))
            else:  # GroupNorm affine: identity map
                val = 1.0 if name.endswith("weight") else 0.0
                cols.append(torch.full((n, k), val, dtype=p.dtype))
                continue
            cols.append((torch.rand(n, k, generator=generator, dtype=p.dtype) * 2 - 1) * bound)
        return torch.cat(cols, 1).to(p.device)

    def _is_conv_bias(self, name: str) -> bool:
        return len(self._shapes[self._names.index(name[: -len("bias")] + "weight")]) == 4

    def conv_weight_slices(self) -> list[tuple[slice, tuple[int, ...]]]:
        """Where each convolution's weight tensor lies in the flat vector, with its shape."""
        out, i = [], 0
        for name, shape in zip(self._names, self._shapes):
            k = math.prod(shape)
            if name.endswith("weight") and len(shape) == 4:
                out.append((slice(i, i + k), tuple(shape)))
            i += k
        return out
