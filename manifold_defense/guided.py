"""Classifier-guided generation on the inversion core.

Daras et al., "Intermediate Layer Optimization for Inverse Problems using Deep Generative Models",
ICML 2021, §4: a (robust) classifier plays the measurement operator and the "measurement" is a
target class; optimising through the generator's intermediate layers within ℓ1 balls (ILO) steers
it beyond its range while staying close to natural images. The authors never released that code;
this module builds it on the library's one optimisation loop:

- ``method="ilo"`` — ``ilo`` with the cross-entropy to the target;
- ``method="latent"`` — ``csgm`` with the same loss (first layer only:
  the range-limited baseline);
- ``method="pixel"`` — Santurkar et al., "Image Synthesis with a Single (Robust) Classifier",
  NeurIPS 2019: descent in pixel space from the start image within an ℓ2 ball, under the robust
  classifier, no generator.

Starting images are projected onto the generator (the fast default projection) for ``ilo``/``latent``;
with ``reference_weight`` > 0 a term ``‖x − start‖²/n`` keeps results near their start (morphing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.defended import ProjectionConfig
from manifold_defense.inversion import ball_projection, csgm, descend, ilo
from manifold_defense.inversion.result import check_generator
from manifold_defense.protocols import Splittable
from manifold_defense.utils import state_digest
from manifold_defense.validation import InputError, check_images

__all__ = ["GuidedResult", "guided_generate", "guided_metrics", "METHODS"]

METHODS = ("ilo", "latent", "pixel")


@dataclass
class GuidedResult:
    """What ``guided_generate`` returns, one row per (start, target) pair.

    ``images``: the results. ``start``: the start images (given, or ``G(z)`` of random latents).
    ``start_range``: the start as the optimisation began (its projection ``G(ẑ)`` for ``ilo``/``latent``,
    the start itself for ``pixel``). ``target_probability``: final ``p(target | image)`` under the
    guiding classifier. ``trace``: ``(T, N)`` target probability after each objective evaluation (the
    optimisation's progress). ``frames``: ``(F, N, C, H, W)`` snapshots along the way (if requested).
    ``generator_evals``: per-pair generator passes (projection of the start included).
    """

    images: torch.Tensor
    start: torch.Tensor
    start_range: torch.Tensor
    target: torch.Tensor
    target_probability: torch.Tensor
    trace: torch.Tensor
    frames: torch.Tensor
    generator_evals: torch.Tensor
    method: str
    info: dict = field(default_factory=dict)


class _Guidance(nn.Module):
    """The "measurement operator" of guidance: an image → (the classifier's logits, the image itself)."""

    linear = False

    def __init__(self, classifier: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.classifier = classifier
        self.in_shape = shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(x), x


class _Recorder:
    """The guidance loss. Its "measurements" are pair indices, so it knows which pairs a batch of rows
    holds and records their target probability (and snapshots) at every evaluation."""

    def __init__(self, target: torch.Tensor, reference: torch.Tensor | None, reference_weight: float,
                 initial: torch.Tensor, frames: int, steps: int) -> None:
        self.target, self.reference, self.reference_weight = target, reference, reference_weight
        n = target.shape[0]
        self.current_p = torch.zeros(n, device=target.device)
        self.current_x = initial.detach().clone()
        self.trace: list[torch.Tensor] = []
        self.frames: list[torch.Tensor] = [initial.detach().clone()] if frames > 0 else []
        self.every = max(1, steps // frames) if frames > 0 else 0
        self.calls = 0

    def __call__(self, pred: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        logits, x = pred
        t = self.target[idx]
        f = F.cross_entropy(logits, t, reduction="none")
        if self.reference_weight:
            f = f + self.reference_weight * (x - self.reference[idx]).pow(2).flatten(1).mean(1)
        with torch.no_grad():
            self.current_p[idx] = logits.detach().softmax(1).gather(1, t[:, None]).squeeze(1).to(self.current_p)
            self.current_x[idx] = x.detach().to(self.current_x)
            self.trace.append(self.current_p.clone())
            self.calls += 1
            if self.every and self.calls % self.every == 0:
                self.frames.append(self.current_x.clone())
        return f


def _num_classes(classifier: nn.Module, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> int:
    with torch.no_grad():
        out = classifier(torch.zeros(1, *shape, device=device, dtype=dtype))
    if out.dim() != 2:
        raise InputError(f"the classifier must return (N, classes) logits, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def _check_targets(target: torch.Tensor | int | list, n: int | None, num_classes: int,
                   device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"target must hold integer class indices, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n if n is not None else 1)
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        raise InputError(f"target must be one class per start image ({n}), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InputError("target is empty")
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise InputError(f"target classes must be in [0, {num_classes}) (the classifier's classes), got "
                         f"min {int(t.min())}, max {int(t.max())}")
    return t.long().contiguous()


def guided_generate(
    generator: nn.Module,
    classifier: nn.Module,
    target: torch.Tensor | int | list[int],
    start: torch.Tensor | None = None,
    *,
    method: str = "ilo",
    steps: int = 300,
    lr: float | None = None,
    layers: list[int] | None = None,
    radii: list[float] | float = 0.3,
    reference_weight: float = 0.0,
    prior_weight: float = 0.0,
    epsilon: float | None = None,
    projection: ProjectionConfig | None = None,
    frames: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> GuidedResult:
    """Steer ``generator`` towards class ``target`` of ``classifier`` (Daras et al. 2021 §4), for many
    (start, target) pairs in one batch.

    Maximises ``log p(target | x)`` (minimises the cross-entropy) plus ``reference_weight·‖x − start‖²/n``.
    ``steps`` is the total budget of objective evaluations per pair, shared by the stages: ``latent``
    spends it all in z (Adam, ``lr`` default 0.05, ``prior_weight·‖z‖²``); ``ilo`` splits it evenly
    between z and each intermediate layer of ``layers`` (default: all but the output), each layer
    within the ℓ1 ball of relative radius ``radii`` around the previous stage's solution
    (ILO's relative step size ``lr``, default 0.2); ``pixel`` spends it in pixel space (Adam, ``lr``
    default 0.01) within the ℓ2 ball of radius ``epsilon`` around the start and [0, 1] (default
    ``0.3·√n`` for n pixels: 8.4 on MNIST, 2.4 on the 8×8 digits).

    ``start``: ``(N, C, H, W)`` images in [0, 1]; for ``ilo``/``latent`` they are projected onto the
    generator first (``projection``: a ``ProjectionConfig``, default the
    generator's fast projection). Without ``start``, pairs begin at ``G(z)``, ``z ~ N(0, I)`` (seeded),
    one per entry of ``target``. ``frames`` > 0 keeps that many snapshots along the way (morphing).
    """
    if method not in METHODS:
        raise InputError(f"unknown guidance method {method!r}; use one of {', '.join(METHODS)}")
    check_generator(generator)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if reference_weight < 0 or prior_weight < 0:
        raise InputError(f"reference_weight and prior_weight must be >= 0, got {reference_weight}, {prior_weight}")
    shape = tuple(generator.output_shape)
    if epsilon is None:
        epsilon = 0.3 * math.sqrt(math.prod(shape))
    if method == "pixel" and not epsilon > 0:
        raise InputError(f"epsilon must be > 0, got {epsilon}")
    if frames < 0:
        raise InputError(f"frames must be >= 0, got {frames}")
    in_shape = getattr(classifier, "input_shape", None)
    if in_shape is not None and tuple(in_shape) != shape:
        raise InputError(f"generator/classifier shape mismatch: the generator makes images of shape {shape} but the "
                         f"classifier expects {tuple(in_shape)}")
    p = next(generator.parameters())
    device, dtype = p.device, p.dtype
    num_classes = _num_classes(classifier, shape, device, dtype)
    if start is not None:
        check_images(start, shape, name="start")
        start = start.to(device, dtype)
    t = _check_targets(target, None if start is None else start.shape[0], num_classes, device)
    n = t.shape[0]
    gen = torch.Generator().manual_seed(seed)
    evals = torch.zeros(n, device=device, dtype=dtype)
    if start is None:
        z0 = torch.randn(n, generator.latent_dim, generator=gen).to(device, dtype)
        with torch.no_grad():
            start = generator(z0)
        evals += 1
    elif method != "pixel":
        projection = projection or ProjectionConfig.for_generator(generator)
        proj = projection.project(generator, start)
        z0 = proj.z.detach()
        evals += proj.generator_evals.to(dtype)
    if method == "pixel":
        z0 = None
        begin = start.clone()
    else:
        with torch.no_grad():
            begin = generator(z0)
    if method == "ilo" and not isinstance(generator, Splittable):
        raise InputError(f"method='ilo' needs a generator with intermediate layers (split); "
                         f"{type(generator).__name__} has none")

    rec = _Recorder(t, start, reference_weight, begin, frames, steps)
    op = _Guidance(classifier, shape)
    idx = torch.arange(n, device=device)
    if method == "latent":
        res = csgm(generator, idx, op, loss=rec, init=z0, steps=steps, lr=0.05 if lr is None else lr,
                   prior_weight=prior_weight, seed=seed, progress=progress)
        images, info = res.x.detach(), {}
        evals += res.generator_evals
    elif method == "ilo":
        num = generator.num_splits
        layers = list(range(1, num)) if layers is None else list(layers)
        if not layers:
            raise InputError("method='ilo' needs at least one intermediate layer; this generator has a single "
                             "block (use method='latent')")
        per = steps // (len(layers) + 1)
        if per < 1:
            raise InputError(f"steps={steps} is too few for {len(layers) + 1} ILO stages")
        radii_l = [float(radii)] * len(layers) if isinstance(radii, (int, float)) else [float(r) for r in radii]
        res = ilo(generator, idx, op, loss=rec, layers=layers, steps=per, radii=radii_l,
                  lr=0.2 if lr is None else lr, schedule="constant",
                  csgm_kwargs={"init": z0, "steps": steps - per * len(layers), "lr": 0.05,
                               "prior_weight": prior_weight},
                  seed=seed, progress=progress)
        images, info = res.x.detach(), {"layers": layers, "relative_radii": radii_l}
        evals += res.generator_evals
    else:
        eps = float(epsilon)

        def guidance(x: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return rec(op(x), rows)

        # Santurkar et al.: descent in pixel space, projected onto the ℓ2 ball around the start and [0, 1]
        images = descend(begin.clone(), lambda v: v, guidance, steps=steps, lr=0.01 if lr is None else lr,
                         project=ball_projection(begin, eps, "l2"), progress=progress, desc="guided pixel").variables
        images, info = images.detach(), {"epsilon": eps}
    with torch.no_grad():
        prob = classifier(images).softmax(1).gather(1, t[:, None]).squeeze(1)
    trace = torch.stack(rec.trace) if rec.trace else torch.zeros(0, n)
    fr = torch.stack(rec.frames + [images]) if frames > 0 else torch.zeros(0, n, *shape)
    info.update({"steps": steps, "reference_weight": reference_weight, "guide_digest": state_digest(classifier)})
    return GuidedResult(images=images, start=start.detach(), start_range=begin.detach(), target=t,
                        target_probability=prob, trace=trace, frames=fr, generator_evals=evals, method=method,
                        info=info)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


def guided_metrics(result: GuidedResult, judge: nn.Module, generator: nn.Module, *,
                   projection: ProjectionConfig | None = None) -> dict:
    """Quality of guided results, each as (mean, standard error) over pairs:

    ``judge_success``: fraction an independent ``judge`` classifier (trained separately, never used for
    guidance) assigns to the target; ``l2_to_start``: ‖x − start‖₂; ``range_residual``: per-pixel
    ``‖G(ẑ) − x‖²/n`` of the result's projection onto ``generator`` (how far it left the range);
    ``target_probability``: under the guiding classifier. Also the raw per-pair values.
    """
    if "guide_digest" in result.info and state_digest(judge) == result.info["guide_digest"]:
        raise InputError("the judge is the guiding classifier (same weights): its verdict would not be independent; "
                         "judge with a classifier trained separately")
    x = result.images
    with torch.no_grad():
        ok = (judge(x).argmax(1) == result.target).double()
    l2 = (x - result.start).flatten(1).norm(dim=1)
    projection = projection or ProjectionConfig.for_generator(generator)
    proj = projection.project(generator, x)
    resid = (proj.x.detach() - x).pow(2).flatten(1).mean(1)
    out = {"n": int(x.shape[0])}
    for name, v in (("judge_success", ok), ("l2_to_start", l2), ("range_residual", resid),
                    ("target_probability", result.target_probability)):
        m, se = _mean_se(v.detach().cpu())
        out[name], out[f"{name}_se"] = m, se
    out["per_pair"] = {"judge_correct": ok.cpu().tolist(), "l2_to_start": l2.cpu().tolist(),
                       "range_residual": resid.cpu().tolist()}
    return out
