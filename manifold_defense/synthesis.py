"""Analysis by synthesis (ABS): Schott, Rauber, Bethge, Brendel, "Towards the first adversarially robust
neural network model on MNIST", ICLR 2019.

One generator per class; class ``c``'s logit is minus how well its generator explains the input,

    ``l_c(x) = −scale · min_z [ ‖G_c(z) − x‖² / n + β ‖z‖² / (2n) ]``

(the ELBO-style bound of the paper's code with a unit-variance posterior: the squared error per pixel plus
β × the KL to the prior per pixel), the minimum found by inference rather than by the encoder: the best of a
fixed set of random latents (the paper's 8000), then Adam steps. It is a projection onto every class's
manifold, so it runs on the descent engine (``descend``), all classes and
restarts of a batch in one descent (the class generators are stacked with ``torch.func``).

Gradients: the logits are recomputed at the (detached) optimal latents, so autograd gives
``∂l_c/∂x = −scale · 2 (x − G_c(ẑ_c)) / n`` — the exact derivative of the minimum's value where ẑ_c is
the minimiser (Danskin's theorem), i.e. the implicit gradient of every class's projection at no extra cost.
Any white-box attack on this module is therefore the adaptive attack the issue of gradient masking asks
for; the paper's own evaluation added decision-based and latent attacks, as the ``standard`` suite does.

Differences from the paper, stated: the generators are the library's class VAEs (e.g. zoo
``mnist-class-vaes``, MLPs with a 10-d latent, where ABS uses convolutional VAEs with an 8-d latent); the
encoder's code is a second start beside the best random latent (ABS uses no encoder at inference); no input
binarisation (the paper's "binary ABS" is a different model).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from manifold_defense.inversion.engine import descend
from manifold_defense.protocols import ClassConditional, Encoded
from manifold_defense.validation import InputError, check_images

__all__ = ["AnalysisBySynthesis", "ABS"]


class AnalysisBySynthesis(nn.Module):
    """Schott et al. 2019's analysis-by-synthesis classifier over a class-conditional ``generator``.

    ``candidates`` random latents (the ``candidates`` most likely of ``candidates / (1 − dismiss)`` draws, as
    the paper; one fixed set shared by every input and class, seeded by ``seed``) give each (input, class)
    its best start; the encoder's code (when the class generators have encoders) is a second start; then
    ``steps`` Adam steps of ``lr`` on every start, and each class keeps its best. ``beta`` weighs the prior
    (ABS: 1). ``scale`` multiplies the logits (a softmax temperature: it changes cross-entropy, not the
    prediction). ``num_classes``, when given, must be the generator's. ``min_rows`` pads every pass so that an
    input's logits do not depend on the rest of its batch (see ``rows_at_least``).
    """

    def __init__(self, generator: nn.Module, *, beta: float = 1.0, candidates: int = 8000, dismiss: float = 0.2,
                 steps: int = 50, lr: float = 0.05, encoder_start: bool = True, scale: float = 1.0, seed: int = 0,
                 num_classes: int | None = None, min_rows: int = 16) -> None:
        super().__init__()
        if not isinstance(generator, ClassConditional):
            raise InputError(f"analysis by synthesis needs a class-conditional generator (one model per class, "
                             f"e.g. zoo 'mnist-class-vaes'); got {type(generator).__name__}")
        if num_classes is not None and num_classes != generator.num_classes:
            raise InputError(f"the generator has {generator.num_classes} classes but num_classes={num_classes} "
                             "was asked for")
        if candidates < 1 or steps < 0 or not lr > 0 or beta < 0 or not scale > 0 or not 0 <= dismiss < 1:
            raise InputError("analysis by synthesis needs candidates >= 1, steps >= 0, lr > 0, beta >= 0, scale > 0 "
                             f"and 0 <= dismiss < 1; got {candidates}, {steps}, {lr}, {beta}, {scale}, {dismiss}")
        if min_rows < 1:
            raise InputError(f"min_rows must be >= 1, got {min_rows}")
        self.generator = generator
        self.num_classes = int(generator.num_classes)
        models = [generator.condition(c) for c in range(self.num_classes)]
        shapes = {tuple(m.output_shape) for m in models}
        dims = {int(m.latent_dim) for m in models}
        if len(shapes) != 1 or len(dims) != 1:
            raise InputError("every class's generator must share one latent size and one image shape")
        self.input_shape = shapes.pop()
        self.latent_dim = dims.pop()
        self.beta, self.candidates, self.dismiss, self.steps, self.lr = float(beta), int(candidates), float(dismiss), \
            int(steps), float(lr)
        self.encoder_start = bool(encoder_start) and all(isinstance(m, Encoded) for m in models)
        self.scale, self.seed, self.min_rows = float(scale), int(seed), int(min_rows)
        self._cache: tuple | None = None  # (key, candidate latents, their images per class, their squared norms)
        self._decoder: tuple | None = None  # (key, the stacked decode)

    # ---------------------------------------------------------------------------------------------- pieces
    def _models(self) -> list[nn.Module]:
        return [self.generator.condition(c) for c in range(self.num_classes)]

    def __getstate__(self) -> dict:
        """Pickled without the stacked decode (a closure; rebuilt on first use): worker processes get the model."""
        return {**self.__dict__, "_decoder": None}

    def _key(self) -> tuple:
        """Changes whenever a weight of the generator does (in place or replaced): what the caches are keyed by."""
        p = list(self.generator.parameters())
        return (p[0].device, p[0].dtype, tuple(t._version for t in p), tuple(t.data_ptr() for t in p))

    def _decode(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``decode(z)``: latents ``(rows, C, k)`` → images ``(rows, C, n)``, class c's generator on ``z[:, c]``
        (the stacked weights are kept until a weight changes: every forward of an attack reuses them)."""
        from torch.func import functional_call, stack_module_state

        key = self._key()
        if self._decoder is not None and self._decoder[0] == key:
            return self._decoder[1]
        models = self._models()
        try:
            params, buffers = stack_module_state(models)
        except RuntimeError as e:  # e.g. class generators of different architectures
            raise InputError(f"the class generators cannot be stacked into one batched pass: {e}") from None
        params = {k: v.detach() for k, v in params.items()}  # the attack differentiates in x, never in the weights
        base = copy.deepcopy(models[0]).to("meta")

        def one(p, b, z):
            return functional_call(base, (p, b), (z,)).flatten(1)

        batched = torch.vmap(one, in_dims=(0, 0, 1), out_dims=1)
        self._decoder = (key, lambda z: batched(params, buffers, z))
        return self._decoder[1]

    def _starts(self, x: torch.Tensor, decode) -> torch.Tensor:
        """Starting latents ``(n · R, C, k)``: the best candidate per (input, class), then the encoder's code."""
        n, k = x.shape[0], self.latent_dim
        p = next(self.generator.parameters())
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            gen = torch.Generator().manual_seed(self.seed)
            draws = torch.randn(int(round(self.candidates / (1 - self.dismiss))), k, generator=gen)
            z = draws[draws.pow(2).sum(1).argsort()[: self.candidates]].to(p.device, p.dtype)  # the most likely
            with torch.inference_mode():
                images = torch.cat([decode(c[:, None].expand(-1, self.num_classes, -1).contiguous())
                                    for c in z.split(1000)])  # (K, C, n)
            self._cache = (key, z, images.transpose(0, 1).contiguous(), images.pow(2).sum(-1).T.contiguous())
        _, z, images, sq = self._cache
        flat = x.flatten(1)  # x arrives padded to min_rows (see fit)
        # ‖x − G_c(z)‖² + β‖z‖²/2 for every (class, input, candidate), by one matrix product per class
        d = flat.pow(2).sum(1)[None, :, None] + sq[:, None, :] - 2 * torch.einsum("in,ckn->cik", flat, images)
        d = d + self.beta * z.pow(2).sum(1)[None, None, :] / 2
        best = z[d.argmin(2)].transpose(0, 1)  # (n, C, k)
        starts = [best]
        if self.encoder_start:
            starts.append(torch.stack([m.encode(x) for m in self._models()], 1))
        return torch.stack(starts, 1).reshape(-1, self.num_classes, k)

    def _objective(self, images: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per (row, class): ``‖G_c(z) − x‖² / n + β ‖z‖² / (2n)`` with ``images = G(z)`` of shape (rows, C, n)."""
        n = images.shape[-1]
        return ((images - x.flatten(1)[:, None]).pow(2).sum(-1) + self.beta * z.pow(2).sum(-1) / 2) / n

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with copies of its last row up to ``min_rows`` rows: every pass then has as many rows whatever
        the batch, so an input's logits do not depend on the rest of its batch."""
        n = len(x)
        return x if n >= self.min_rows or n == 0 else torch.cat([x, x[-1:].expand(self.min_rows - n, *x.shape[1:])])

    def fit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The best latent of every class for every input (``(n, C, k)``, no gradient) and its objective ``(n, C)``."""
        check_images(x, self.input_shape)
        n = len(x)
        decode = self._decode()
        with torch.no_grad():
            x = self._padded(x.detach())
            starts = self._starts(x, decode)
            r = starts.shape[0] // len(x)
            targets = x.repeat_interleave(r, 0)

            def data(images, v, rows):
                return self._objective(images, v, targets[rows]).sum(1)  # classes are independent: their sum

            # keep='last' and no early stopping: each class's latents follow their own Adam path (Adam is
            # per-coordinate), so the sum over classes couples nothing; each class picks its best start below
            res = descend(starts, decode, data, steps=self.steps, lr=self.lr, step_rule="adam", keep="last",
                          desc="abs")
            z = res.variables.detach()
            obj = self._objective(decode(z), z, targets).view(len(x), r, self.num_classes)
            pick = obj.argmin(1)  # (n, C): the best start per class
            z = z.view(len(x), r, self.num_classes, -1).gather(1, pick[:, None, :, None].expand(
                -1, 1, -1, self.latent_dim)).squeeze(1)
            return z[:n], obj.gather(1, pick[:, None]).squeeze(1)[:n]

    def reconstructions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every class's best fit of every input, ``(n, C, *input_shape)``, and the logits they give ``(n, C)``
        (no gradient): the range points the latent-descent attack (Schott et al. 2019) walks towards."""
        z, obj = self.fit(x)
        with torch.no_grad():
            images = self._decode()(self._padded(z))[: len(x)]
        return images.view(len(x), self.num_classes, *self.input_shape), -self.scale * obj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``−scale · (best fit of x by class c)``, differentiable in ``x`` (Danskin's gradient)."""
        z, _ = self.fit(x)
        with torch.no_grad():
            images = self._decode()(self._padded(z))[: len(x)]
        return -self.scale * self._objective(images, z, x)


#: the paper's name
ABS = AnalysisBySynthesis
