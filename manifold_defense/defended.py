"""Projection defenses: classify ``G(ẑ(x))`` instead of ``x`` (Samangouei et al. 2018; Ilyas et al. 2017).

``ẑ(x) = argmin_z ‖G(z) − x‖² / n + λ‖z‖²`` comes from the shared inversion core with the identity
operator. ``ProjectionConfig`` says how; ``ProjectionConfig.defense_gan()`` is the published
recipe, the default is a cheaper encoder-started one.

Gradients: the projection is an argmin, so ``∂G(ẑ(x))/∂x`` is not available by backpropagation.
By default the forward pass uses the straight-through estimator of BPDA (Athalye, Carlini, Wagner
2018): ``x + (G(ẑ) − x).detach()``, so any gradient-based attack run on a ``DefendedModel`` (foolbox,
AutoAttack, torchattacks) is automatically an adaptive BPDA attack rather than a victim of obfuscated
gradients. ``gradient="unrolled"`` backpropagates through the projection's optimisation steps
(affordable for short projections; the end-to-end attack of the same paper). ``gradient="none"``
gives exactly zero input gradients — the vanishing gradients that made Defense-GAN look robust to
white-box attacks in its paper — for comparison only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from manifold_defense.cache import active_cache, count_projection
from manifold_defense.inversion import InversionResult, csgm, dead_zone_loss
from manifold_defense.operators import Identity
from manifold_defense.implicit import implicit_projection
from manifold_defense.protocols import ClassConditional, Encoded, Generator, describe
from manifold_defense.utils import content_keys, rows_at_least
from manifold_defense.validation import InputError, check_compatible, check_images, model_dtype

__all__ = ["ProjectionConfig", "DefendedModel", "PROJECTIONS", "GRADIENTS"]

#: named projections (``ProjectionConfig.preset``)
PROJECTIONS = ("default", "defense_gan", "dead_zone")
#: gradient modes of ``DefendedModel``
GRADIENTS = ("bpda", "implicit", "unrolled", "none")


@dataclass(frozen=True)
class ProjectionConfig:
    """Settings of the projection onto the generator's range (keyword arguments of ``csgm``).

    The default is the fast projection: restart 0 at the generator's encoder (the VAE's, or one trained
    for a GAN as in Invert-and-Defend, e.g. zoo ``mnist-wgan-inv``), restarts 1–2 at the 2 best of
    ``search_candidates`` random latents (forward passes shared by the batch), 10 Adam steps on all
    three, then only each sample's best continues (``prune_after``) for up to 60 more with a cosine
    schedule and per-sample early stopping (``tol``/``patience``). On MNIST with mnist-vae20 it reaches
    Defense-GAN's L × R = 200 × 10 projection error with 28× fewer generator evaluations and 20× the images
    per second (benchmarks/results/projection_speed.json); generators may carry tuned settings
    (``for_generator``).

    ``init``: 'encoder' (restart 0 at the encoder, others perturb it), 'search' (the ``restarts`` best
    of ``search_candidates`` random latents), 'encoder+search', or 'random'; without an encoder
    'encoder' falls back to 'random' and 'encoder+search' to 'search'. ``stochastic=True`` draws fresh
    random restarts on every call (a randomised defense: attack it with EOT). ``dead_zone`` > 0
    replaces the squared error by ``dead_zone_loss`` (residuals up
    to that size per pixel are free, so bounded pixel noise does not pull the projection). ``min_rows``
    pads every network pass to that many rows so that an input's projection — and the defended model's
    answer — does not depend on the rest of its batch (float32 kernels for a few rows round differently;
    ``rows_at_least``); 1 turns it off.
    """

    steps: int = 70
    restarts: int = 3
    lr: float = 0.1
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "cosine"
    init: str = "encoder+search"
    init_scale: float = 1.0
    prior_weight: float = 0.0
    tol: float = 3e-4
    patience: int = 5
    stochastic: bool = False
    seed: int = 0
    dead_zone: float = 0.0
    search_candidates: int = 2000
    prune_after: int = 10
    min_rows: int = 16

    def __post_init__(self) -> None:
        if self.steps < 0 or self.restarts < 1:
            raise InputError(f"projection needs steps >= 0 and restarts >= 1, got {self.steps}, {self.restarts}")
        if self.lr <= 0:
            raise InputError(f"projection learning rate must be > 0, got {self.lr}")
        if self.init not in ("encoder", "random", "search", "encoder+search"):
            raise InputError(f"init must be 'encoder', 'random', 'search' or 'encoder+search', got {self.init!r}")
        if not 0 <= self.dead_zone < 1:
            raise InputError(f"dead_zone must be in [0, 1), got {self.dead_zone}")
        if self.min_rows < 1:
            raise InputError(f"min_rows must be >= 1, got {self.min_rows}")
        if self.prune_after < 0:
            raise InputError(f"prune_after must be >= 0 (0 or >= steps: never prune), got {self.prune_after}")
        if self.search_candidates < self.restarts and "search" in self.init:
            raise InputError(f"search_candidates ({self.search_candidates}) must be >= restarts ({self.restarts})")

    @classmethod
    def for_generator(cls, generator: nn.Module, **overrides) -> "ProjectionConfig":
        """The default projection with the generator's own tuned settings and then ``overrides`` applied.

        Tuned settings travel in the generator's checkpoint metadata (``metadata["projection"]``, written
        by the zoo, e.g. for ``mnist-wgan-inv``), so a model loaded from a zoo name or from its file gets
        the same projection."""
        tuned = dict(getattr(generator, "metadata", {}).get("projection") or {})
        unknown = set(tuned) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"the generator's metadata names unknown projection settings {sorted(unknown)}")
        return replace(cls(), **{**tuned, **overrides})

    @classmethod
    def defense_gan(cls, latent_dim: int = 128, **overrides) -> "ProjectionConfig":
        """Defense-GAN's published projection: L = 200 steps, R = 10 random restarts, momentum SGD (0.7)
        with lr 10 dropped ×0.1 at 80 % of the steps, z0 ~ N(0, 1/latent_dim), no early stopping.
        """
        cfg = cls(steps=200, restarts=10, lr=10.0, optimizer="sgd", momentum=0.7, schedule="step", init="random",
                  init_scale=1 / math.sqrt(latent_dim), prior_weight=0.0, tol=0.0, prune_after=0)
        return replace(cfg, **overrides)

    @classmethod
    def dead_zone_search(cls, width: float = 0.3, **overrides) -> "ProjectionConfig":
        """Projection that ignores bounded pixel noise: ILO's dead-zone loss (residuals up to ``width`` per
        pixel are free) started from the 4 best of 2000 random latents, 100 Adam steps — the cost of the
        default. On MNIST / mnist-vae20 it keeps FGSM-0.3 transfer inputs on their digit far more often
        than the squared-error projections (benchmarks/defense_mnist.py reports by how much)."""
        cfg = cls(init="search", restarts=4, steps=100, lr=0.05, dead_zone=width, search_candidates=2000, prune_after=0,
                  tol=1e-4, patience=20)
        return replace(cfg, **overrides)

    @classmethod
    def preset(cls, name: str, generator: nn.Module, **overrides) -> "ProjectionConfig":
        """A projection by name for ``generator``: 'default' (``for_generator``), 'defense_gan'
        (``defense_gan`` at the generator's latent size) or 'dead_zone' (``dead_zone_search``)."""
        if name == "default":
            return cls.for_generator(generator, **overrides)
        if name == "defense_gan":
            return cls.defense_gan(latent_dim=generator.latent_dim, **overrides)
        if name == "dead_zone":
            return cls.dead_zone_search(**overrides)
        raise InputError(f"unknown projection {name!r}; use one of {', '.join(PROJECTIONS)}")

    def as_dict(self) -> dict:
        """The settings as a plain dict (JSON-ready)."""
        return asdict(self)

    def csgm_kwargs(self, generator: nn.Module, call: int = 0) -> dict:
        """Keyword arguments of ``csgm`` for projecting onto ``generator``.

        Falls back to random starts when the generator has no encoder; in stochastic mode the seed
        changes with ``call`` so every call draws fresh restarts.
        """
        kw = {k: v for k, v in self.as_dict().items() if k not in ("stochastic", "dead_zone")}
        if "search" not in self.init:
            kw.pop("search_candidates")
        if self.dead_zone > 0:
            kw["loss"] = dead_zone_loss(self.dead_zone)
        if not isinstance(generator, Encoded):
            kw["init"] = {"encoder": "random", "encoder+search": "search"}.get(kw["init"], kw["init"])
        if self.stochastic:
            kw["seed"] = self.seed + 1 + call
        return kw


    def project(self, generator: nn.Module, x: torch.Tensor, *, call: int = 0, differentiable: bool = False,
                cache: str = "read") -> InversionResult:
        """Project ``x`` onto ``generator``'s range with these settings (the inversion core, identity operator).

        Each input's random restarts are keyed by its own content (and ``call`` in stochastic mode), so its
        projection does not depend on what else is in the batch. Inside ``with ProjectionCache():``
        (``manifold_defense.cache``) a deterministic projection is kept per input row: ``cache='read'``
        returns rows projected before (exact inputs only) and projects the rest, ``'store'`` always projects
        (a cold answer, e.g. the one an attack is scored on) and keeps the result, ``'off'`` neither."""
        if cache not in ("read", "store", "off"):
            raise InputError(f"cache must be 'read', 'store' or 'off', got {cache!r}")
        store = active_cache() if cache != "off" and not self.stochastic and not differentiable else None
        if store is None:
            return self._project(generator, x, call, differentiable)
        keys = store.keys(store.scope(generator, self.as_dict()), x)
        held = store.lookup(keys, x) if cache == "read" else [None] * len(x)
        todo = [i for i, h in enumerate(held) if h is None]
        res = self._project(generator, x[todo], call, False) if todo else None
        if res is not None:
            store.store([keys[i] for i in todo], x[todo], _cached_fields(res))
            if len(todo) == len(x):
                return res
        return _assemble(x, held, todo, res)

    def refine(self, generator: nn.Module, x: torch.Tensor, z_start: torch.Tensor, *, steps: int) -> InversionResult:
        """A warm-started projection of ``x``: ``steps`` steps of this projection's optimizer from the latents
        ``z_start`` (one per row; one restart, no search, no early stopping, never cached). An attack's input
        moves a little per step, so its previous projection's ``ẑ`` is a good start: crafting follows it for a
        fraction of a cold projection's cost. Crafting only — a model's answer is always the cold projection."""
        if steps < 1:
            raise InputError(f"a warm-started projection needs steps >= 1, got {steps}")
        if self.stochastic:
            raise InputError("a stochastic projection draws fresh restarts per call: it has no previous ẑ to start from")
        kw = self.csgm_kwargs(generator)
        kw.pop("search_candidates", None)
        kw.update(init=z_start.detach(), restarts=1, steps=steps, prune_after=0, tol=0.0)
        count_projection({**self.as_dict(), "warm_steps": steps}, len(x))
        return csgm(generator, x, Identity(tuple(generator.output_shape)), **kw)

    def _project(self, generator: nn.Module, x: torch.Tensor, call: int, differentiable: bool) -> InversionResult:
        count_projection(self.as_dict(), len(x))
        kw = self.csgm_kwargs(generator, call)
        keys = content_keys(x, kw["seed"])
        return csgm(generator, x, Identity(tuple(generator.output_shape)), differentiable=differentiable,
                    sample_keys=keys, **kw)


_CACHED = ("z", "x", "loss", "objective", "restart", "diverged")


def _cached_fields(res: InversionResult) -> dict[str, torch.Tensor]:
    return {k: getattr(res, k) for k in _CACHED}


def _assemble(x: torch.Tensor, held: list, todo: list[int], res: InversionResult | None) -> InversionResult:
    """A projection of every row of ``x`` from cached rows (``held``) and the rows ``todo`` just projected
    (``res``): cached rows cost no generator evaluations and have no history."""
    n, pos = len(x), {i: j for j, i in enumerate(todo)}
    fields = {k: torch.stack([getattr(res, k)[pos[i]] if i in pos else held[i][k] for i in range(n)])
              for k in _CACHED}
    steps = 0 if res is None else res.history.shape[0]
    history = torch.full((steps, n), float("nan"), dtype=fields["loss"].dtype, device=fields["loss"].device)
    evals = torch.zeros(n, dtype=fields["loss"].dtype, device=fields["loss"].device)
    if res is not None:
        idx = torch.tensor(todo, device=history.device)
        history[:, idx] = res.history
        evals[idx] = res.generator_evals.to(evals.dtype)
    return InversionResult(z=fields["z"], x=fields["x"], loss=fields["loss"], objective=fields["objective"],
                           history=history, generator_evals=evals, restart=fields["restart"],
                           diverged=fields["diverged"], info={"cached_rows": n - len(todo)})


class DefendedModel(nn.Module):
    """``classifier(G(ẑ(x)))``: a classifier behind a projection onto a generator's range.

    An ``nn.Module`` returning logits for images in [0, 1], usable unchanged by foolbox, AutoAttack
    and torchattacks. ``gradient`` is 'bpda' (straight-through, the default), 'implicit' (the exact local
    derivative of the converged projection by implicit differentiation, ``manifold_defense.implicit``),
    'unrolled' (backpropagate through the projection's steps) or 'none' (zero gradient, for comparison).
    Each input's answer does not depend on the rest of its batch (see ``ProjectionConfig.min_rows``).
    """

    def __init__(self, classifier: nn.Module, generator: nn.Module, projection: ProjectionConfig | None = None,
                 *, gradient: str = "bpda") -> None:
        super().__init__()
        if projection is not None and not isinstance(projection, ProjectionConfig):
            hint = (f" (for a named one: ProjectionConfig.preset({projection!r}, generator))"
                    if isinstance(projection, str) else "")
            raise TypeError(f"projection must be a ProjectionConfig, got {type(projection).__name__}{hint}")
        check_compatible(generator, classifier)
        if gradient not in GRADIENTS:
            raise InputError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
        if isinstance(generator, ClassConditional) and not isinstance(generator, Generator):
            raise InputError(f"{type(generator).__name__} is class-conditional: a projection defense needs one range "
                             f"(pass generator.condition(label) to defend with one class's range)")
        if not isinstance(generator, Generator):
            raise InputError(f"{type(generator).__name__} has no latent space (latent_dim, sample_latent): a projection "
                             f"defense, and its {gradient} gradient, needs a Generator (it meets: {describe(generator)})")
        self.classifier = classifier
        self.generator = generator
        self.projection = projection or ProjectionConfig.for_generator(generator)
        self.gradient = gradient
        self.input_shape = tuple(classifier.input_shape)
        self.num_classes = getattr(classifier, "num_classes", None)
        self._calls = 0  # stochastic projections draw anew per call (an int: the model pickles, e.g. to workers)
        for p in generator.parameters():
            p.requires_grad_(False)

    def project(self, x: torch.Tensor) -> InversionResult:
        """Project ``x`` onto the generator's range; ``result.x`` is ``G(ẑ)``, ``result.loss`` the per-sample
        residual ``‖G(ẑ) − x‖² / n`` (``result.objective`` adds the prior term if λ > 0)."""
        return self._project(x, differentiable=False, cache="read")

    def _project(self, x: torch.Tensor, *, differentiable: bool, cache: str = "store") -> InversionResult:
        check_images(x, self.input_shape, dtype=model_dtype(self.generator))
        # The projection takes gradient steps in z even when the caller runs under inference_mode/no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            target = x if differentiable else x.detach().clone()
            self._calls += 1
            return self.projection.project(self.generator, target, call=self._calls - 1,
                                           differentiable=differentiable, cache=cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[0]

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, InversionResult]:
        """``(logits, projection)``: the forward pass and the projection it classified (the range point each
        input was mapped to), returned together rather than left behind in an attribute."""
        unrolled = self.gradient == "unrolled" and x.requires_grad and torch.is_grad_enabled()
        res = self._project(x, differentiable=unrolled)
        return self._classify_projected(x, res, unrolled), res

    def classify_from(self, x: torch.Tensor, z_start: torch.Tensor, *, steps: int
                      ) -> tuple[torch.Tensor, InversionResult]:
        """``(logits, projection)`` through a projection warm-started at ``z_start``
        (``ProjectionConfig.refine``), with this model's gradient: what an attack crafts on between the
        steps where it asks the model itself (``classify``). Not this model's answer."""
        if self.gradient not in ("bpda", "implicit"):
            raise InputError(f"a warm-started projection supports the bpda and implicit gradients, not {self.gradient!r}")
        check_images(x, self.input_shape, dtype=model_dtype(self.generator))
        with torch.inference_mode(False), torch.enable_grad():
            res = self.projection.refine(self.generator, x.detach().clone(), z_start, steps=steps)
        return self._classify_projected(x, res, False), res

    def _classify_projected(self, x: torch.Tensor, res: InversionResult, unrolled: bool) -> torch.Tensor:
        """The classifier's logits at the projection ``res`` of ``x``, with this model's gradient attached."""
        x_proj = res.x.to(x.dtype)
        if x.requires_grad and not unrolled:
            if self.gradient == "bpda":
                x_proj = x_proj.detach() + (x - x.detach())  # value G(ẑ) bitwise, gradient of the identity (BPDA)
            elif self.gradient == "implicit":
                cfg = self.projection
                x_proj = implicit_projection(x, x_proj, res.z, self.generator, dead_zone=cfg.dead_zone,
                                             prior_weight=cfg.prior_weight)
            else:
                x_proj = x_proj + 0 * x  # connected to x with exactly zero gradient (what a naive attack sees)
        return rows_at_least(self.classifier, x_proj, self.projection.min_rows)

    def variant(self, *, projection: ProjectionConfig | None = None, gradient: str | None = None) -> "DefendedModel":
        """The same classifier and generator behind another projection or gradient mode (a surrogate for
        crafting adaptive attacks; the modules are shared, not copied)."""
        return DefendedModel(self.classifier, self.generator, projection or self.projection,
                             gradient=gradient or self.gradient)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, projection={self.projection}"
