"""Model zoo: trained generators and classifiers, shipped with the package or trained on first use and cached.

``get(name)`` returns a trained model in eval mode: the weights shipped inside the package when there are
(hash-verified, :mod:`manifold_defense.shipped`), else the cached build under
``$MANIFOLD_DEFENSE_CACHE/zoo/NAME.pt`` (default ``~/.cache/manifold-defense``), else it trains the recipe
(seeded, a checkpoint per epoch, resumable) into the cache. Everything loads with
``torch.load(weights_only=True)``. No weights are ever downloaded.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manifold_defense import data
from manifold_defense.checkpoint import CheckpointError, file_lock, load_checkpoint, same_config, save_checkpoint
from manifold_defense.models import build_model, load_model, model_from_payload
from manifold_defense.shipped import manifest, shipped_payload
from manifold_defense.utils import resolve_device, state_digest
from manifold_defense.validation import InputError

__all__ = ["ZooEntry", "ENTRIES", "get", "build", "path", "status", "names", "objective_from_config"]


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model: architecture, data and training recipe."""

    name: str
    kind: str  # "generator" or "classifier"
    dataset: str
    arch: str
    arch_config: dict[str, Any]
    #: "vae", "wgan", "encoder" (of train_config["base"]) or "classifier" (train_config's ``objective``: the arguments
    #: of :func:`~manifold_defense.training.objective_preset`; ``init``: the zoo model whose weights it starts from)
    trainer: str
    train_config: dict[str, Any]
    description: str
    budget_minutes: float
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        """The recipe (architecture, data, trainer and its settings; for an encoder, its base generator's recipe
        too): a cached model built from another is refused."""
        spec = {"arch": self.arch, "arch_config": self.arch_config, "trainer": self.trainer,
                "train_config": self.train_config, "dataset": self.dataset}
        if self.trainer == "encoder":  # an encoder fitted to another generator is another model
            spec["base_spec"] = ENTRIES[self.train_config["base"]].spec()
        if "init" in self.train_config:  # a warm start: the model it starts from is part of the recipe
            spec["init_spec"] = ENTRIES[self.train_config["init"]].spec()
        generator = self.train_config.get("objective", {}).get("generator")
        if generator is not None:  # an objective on a generator's range: that generator is part of the recipe
            spec["generator_spec"] = ENTRIES[generator].spec()
        return spec


def _classifier(name: str, model: str, epochs: int, budget: float) -> ZooEntry:
    return ZooEntry(
        name=name, kind="classifier", dataset="mnist", arch="defensegan-classifier",
        arch_config={"model": model}, trainer="classifier",
        train_config={"epochs": epochs, "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "seed": 0},
        description=f"Defense-GAN classifier {model} on MNIST (Adam 1e-3, batch 128, cosine decay, {epochs} epochs)",
        budget_minutes=budget,
    )


def _robust(name: str, train_config: dict[str, Any], what: str, budget: float) -> ZooEntry:
    return ZooEntry(name, "classifier", "mnist", "defensegan-classifier", {"model": "A"}, "classifier",
                    {**train_config, "seed": 0}, f"Defense-GAN classifier A on MNIST, {what}", budget)


#: The fast projection tuned for the 128-d GAN latents with an encoder (see mnist-wgan-inv's entry for why)
_GAN_ENCODER_PROJECTION = {"optimizer": "sgd", "lr": 5.0, "momentum": 0.9, "schedule": "constant", "restarts": 1,
                           "init": "encoder", "steps": 90, "tol": 1e-4, "patience": 25, "prune_after": 0}

#: generator updates of mnist-sngan: the stage of benchmarks/gan_training.py's sn-hinge-bn run with the best FID
SNGAN_ITERATIONS = 10000

ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="digits-vae", kind="generator", dataset="digits", arch="vae-mlp",
            arch_config={"image_shape": [1, 8, 8], "latent_dim": 8, "hidden": [256, 256]},
            trainer="vae", train_config={"epochs": 300, "batch_size": 64, "lr": 1e-3, "seed": 0},
            description="MLP VAE 64-256-256-8 on the 8x8 digits (CSGM's design, scaled down)",
            budget_minutes=1.0,
        ),
        ZooEntry(
            name="digits-classifier", kind="classifier", dataset="digits", arch="digits-cnn",
            arch_config={"input_shape": [1, 8, 8], "num_classes": 10, "width": 32}, trainer="classifier",
            train_config={"epochs": 40, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "augment_shift": 1,
                          "seed": 0},
            description="Small CNN on the 8x8 digits (random 1-pixel shifts)", budget_minutes=0.5,
        ),
        ZooEntry(
            name="mnist-vae20", kind="generator", dataset="mnist", arch="vae-mlp",
            arch_config={"image_shape": [1, 28, 28], "latent_dim": 20, "hidden": [500, 500]},
            trainer="vae", train_config={"epochs": 100, "batch_size": 100, "lr": 1e-3, "seed": 0},
            description="CSGM's MNIST VAE 784-500-500-20 (Bora et al. 2017: Adam 1e-3, batch 100, 100 epochs)",
            budget_minutes=15.0,
        ),
        ZooEntry(
            name="mnist-wgan", kind="generator", dataset="mnist", arch="defensegan-generator",
            arch_config={"latent_dim": 128, "dim": 64}, trainer="wgan",
            train_config={"iterations": 2000, "iterations_per_epoch": 100, "critic_iters": 5, "gp_weight": 10.0,
                          "lr": 1e-4, "betas": [0.5, 0.9], "batch_size": 50, "seed": 0},
            description="Defense-GAN's MNIST generator, WGAN-GP (paper recipe, 2,000 of its 200,000 iterations)",
            budget_minutes=40.0, extra={"critic": {"arch": "wgan-critic", "config": {"dim": 64}}},
        ),
        ZooEntry(
            name="mnist-wgan-inv", kind="generator", dataset="mnist", arch="encoded-generator",
            arch_config={"generator_arch": "defensegan-generator", "generator_config": {"latent_dim": 128, "dim": 64},
                         "encoder_dim": 64},
            trainer="encoder",
            train_config={"base": "mnist-wgan", "epochs": 3, "batch_size": 64, "lr": 1e-3, "image_weight": 1.0,
                          "noise": 0.3, "seed": 0},
            description="mnist-wgan with an encoder trained for it (Invert-and-Defend, Lin et al. 2019): warm starts "
                        "for the fast projection, also trained on randomly L∞-perturbed images (noise 0.3) so that it starts "
                        "the projection of off-manifold inputs well; same generator weights",
            budget_minutes=20.0,
            # Its 128-d latent converges far faster under momentum SGD (momentum 0.9) than under Adam (measured:
            # clean MSE 0.0030 vs 0.0054 at ~90 evaluations), and adding random-search starts in 128 dimensions
            # did not improve on the encoder start. A constant lr 5 with patience 25 beats cosine-decayed lr 10
            # with patience 10 on FGSM inputs (MSE .0284 vs .0306, 100 test images; momentum SGD's loss
            # oscillates, so a short patience stopped those samples early) at the same clean MSE.
            extra={"projection": dict(_GAN_ENCODER_PROJECTION)},
        ),
        ZooEntry(
            name="mnist-sngan", kind="generator", dataset="mnist", arch="defensegan-generator",
            arch_config={"latent_dim": 128, "dim": 64, "batchnorm": True}, trainer="wgan",
            train_config={"iterations": SNGAN_ITERATIONS, "iterations_per_epoch": 100, "loss": "hinge",
                          "critic_iters": 1, "lr": 2e-4, "betas": [0.5, 0.999], "batch_size": 64, "ema": 0.995,
                          "seed": 0},
            description="Defense-GAN's MNIST generator (with DCGAN's batch normalisation), hinge loss against a "
                        "spectrally normalised critic (Miyato et al. 2018), Adam 2e-4 (0.5, 0.999), batch 64, "
                        f"weights averaged (EMA 0.995); {SNGAN_ITERATIONS:,} iterations "
                        "(benchmarks/gan_training.py --recipe sn-hinge-bn)",
            budget_minutes=SNGAN_ITERATIONS / 2000 * 17,
            extra={"critic": {"arch": "wgan-critic", "config": {"dim": 64, "spectral_norm": True}}},
        ),
        ZooEntry(
            name="mnist-sngan-inv", kind="generator", dataset="mnist", arch="encoded-generator",
            arch_config={"generator_arch": "defensegan-generator",
                         "generator_config": {"latent_dim": 128, "dim": 64, "batchnorm": True}, "encoder_dim": 64},
            trainer="encoder",
            train_config={"base": "mnist-sngan", "epochs": 3, "batch_size": 64, "lr": 1e-3, "image_weight": 1.0,
                          "noise": 0.3, "seed": 0},
            description="mnist-sngan with an encoder trained for it (as mnist-wgan-inv): warm starts for the fast "
                        "projection; same generator weights",
            budget_minutes=20.0,
            extra={"projection": dict(_GAN_ENCODER_PROJECTION)},
        ),
        ZooEntry(
            name="digits-robust-l2", kind="classifier", dataset="digits", arch="digits-cnn",
            arch_config={"input_shape": [1, 8, 8], "num_classes": 10, "width": 32}, trainer="classifier",
            train_config={"epochs": 40, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "augment_shift": 1,
                          "seed": 0, "adversary": {"norm": "l2", "epsilon": 0.5, "steps": 5}},
            description="Small CNN on the 8x8 digits, Madry PGD adversarial training (L2 eps 0.5, 5 steps): "
                        "a robust classifier for guided generation",
            budget_minutes=2.0,
        ),
        ZooEntry(
            name="mnist-robust-l2", kind="classifier", dataset="mnist", arch="defensegan-classifier",
            arch_config={"model": "A"}, trainer="classifier",
            train_config={"epochs": 3, "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "seed": 0,
                          "adversary": {"norm": "l2", "epsilon": 2.0, "steps": 7}},
            description="Defense-GAN classifier A on MNIST, Madry PGD adversarial training (L2 eps 2.0, 7 steps, "
                        "3 epochs): the robust classifier that guides ILO generation",
            budget_minutes=15.0,
        ),
        _robust("mnist-fast-linf", {"epochs": 10, "batch_size": 100, "lr": 5e-3, "schedule": "cyclic",
                                    "objective": {"preset": "fast", "norm": "linf", "epsilon": 0.3}},
                "fast adversarial training (Wong, Rice, Kolter 2020: FGSM of 1.25 eps from a random start, Linf eps "
                "0.3, cyclic lr up to 5e-3, batch 100, 10 epochs; benchmarks/robust_mnist.py fast_linf)", 20.0),
        _robust("mnist-trades-linf", {"epochs": 3, "batch_size": 128, "lr": 5e-4, "schedule": "cosine",
                                      "init": "mnist-fast-linf", "objective": {"preset": "trades", "norm": "linf",
                                                                               "epsilon": 0.3, "steps": 40,
                                                                               "step_size": 0.01}},
                "mnist-fast-linf fine-tuned with TRADES (Zhang et al. 2019: beta 1, Linf eps 0.3, 40 steps of 0.01; "
                "Adam 5e-4, cosine, 3 epochs; benchmarks/robust_mnist.py trades_linf_ft)", 150.0),
        ZooEntry(
            name="digits-class-vaes", kind="generator", dataset="digits", arch="class-vaes",
            arch_config={"image_shape": [1, 8, 8], "latent_dim": 4, "hidden": [128, 128], "num_classes": 10},
            trainer="vae", train_config={"epochs": 300, "batch_size": 64, "lr": 1e-3, "seed": 0},
            description="One MLP VAE 64-128-128-4 per digit class (Stutz et al. 2019's class-specific generators, "
                        "scaled down) on the 8x8 digits",
            budget_minutes=2.0,
        ),
        ZooEntry(
            name="mnist-class-vaes", kind="generator", dataset="mnist", arch="class-vaes",
            arch_config={"image_shape": [1, 28, 28], "latent_dim": 10, "hidden": [256, 256], "num_classes": 10},
            trainer="vae", train_config={"epochs": 60, "batch_size": 100, "lr": 1e-3, "seed": 0},
            description="One MLP VAE 784-256-256-10 per MNIST class (Stutz et al. 2019's class-specific generators "
                        "with a 10-d latent; a VAE for its encoder; Adam 1e-3, batch 100, 60 epochs)",
            budget_minutes=20.0,
        ),
        _classifier("mnist-classifier-a", "A", 5, 5.0),
        _classifier("mnist-classifier-b", "B", 12, 5.0),
        _classifier("mnist-classifier-c", "C", 2, 5.0),
        _classifier("mnist-classifier-d", "D", 20, 5.0),
    ]
}


def objective_from_config(config: dict[str, Any], *, device: str | torch.device = "cpu",
                          progress: bool = True) -> Any:
    """The training objective a zoo recipe names: ``{"preset": NAME, **objective_preset's keywords}``, its
    ``generator`` (for 'stutz', 'rmd', 'combined') a zoo name, loaded (or built) on ``device``."""
    from manifold_defense.training import objective_preset

    kwargs = dict(config)
    preset, generator = kwargs.pop("preset"), kwargs.pop("generator", None)
    return objective_preset(preset, get(generator, device=device, progress=progress) if generator else None, **kwargs)


def names() -> list[str]:
    """Every zoo model's name."""
    return list(ENTRIES)


def _entry(name: str) -> ZooEntry:
    if name not in ENTRIES:
        raise InputError(f"unknown zoo model {name!r}; available: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def path(name: str) -> Path:
    """Cache file of a zoo model (it may not exist yet)."""
    _entry(name)
    return data.cache_dir() / "zoo" / f"{name}.pt"


def _check_spec(name: str, meta: dict[str, Any], file: Path) -> None:
    stored = meta.get("zoo_spec")
    if stored is not None and not same_config(stored, ENTRIES[name].spec()):
        raise CheckpointError(
            f"cached {name} at {file} was trained with a different recipe than this library version's; "
            f"rebuild it with `manifold-defense zoo build {name} --force` (or delete the file)"
        )


SOURCES = ("auto", "shipped", "cache")
_WARNED: set[str] = set()  # shipped models whose cached build was compared (once per process)


def get(name: str, device: str | torch.device = "cpu", *, train: bool = True, progress: bool = True,
        source: str | None = None) -> nn.Module:
    """A trained zoo model on ``device`` (eval mode).

    ``source`` (default ``$MANIFOLD_DEFENSE_ZOO_SOURCE``, else 'auto'): 'auto' loads the shipped weights when
    the package has them (the weights the committed benchmarks used), else the cache, else trains and
    caches the recipe; 'shipped' only the shipped weights; 'cache' ignores them (your own build, e.g. after
    ``manifold-defense zoo build NAME --retrain``). With ``train=False`` a missing model raises instead of
    training. A different build of a shipped model in the cache is kept, and 'auto' says which one it used.
    """
    src = source or os.environ.get("MANIFOLD_DEFENSE_ZOO_SOURCE") or "auto"
    if src not in SOURCES:
        raise InputError(f"source must be one of {', '.join(SOURCES)}, got {src!r}")
    entry, file = _entry(name), path(name)
    device = resolve_device(device)
    model = None
    if src != "cache":
        payload = shipped_payload(name, entry.spec(), device)
        if payload is None and src == "shipped":
            raise CheckpointError(f"{name} is not shipped with this package (shipped: {', '.join(manifest()) or 'none'})")
        if payload is not None:
            model = model_from_payload(payload, device, source=f"shipped weights of {name}")
            cached = None if name in _WARNED else _complete_payload(file, device)
            _WARNED.add(name)
            if cached is not None and not _same_weights(cached, payload):
                warnings.warn(f"zoo: using the shipped weights of {name}; your own build at {file} differs and is "
                              f"kept (zoo.get({name!r}, source='cache') or MANIFOLD_DEFENSE_ZOO_SOURCE=cache loads it)",
                              stacklevel=2)
    if model is None:
        payload = _complete_payload(file, device)
        if payload is not None:
            _check_spec(name, payload["metadata"], file)
            model = model_from_payload(payload, device, source=file)
        elif not train:
            raise CheckpointError(f"zoo model {name} is not built yet (looked for {file}); "
                                  f"run `manifold-defense zoo build {name}` or call zoo.get({name!r})")
        else:
            build(name, device=device, progress=progress)
            model = load_model(file, device)
    tuned = entry.extra.get("projection")
    if tuned is not None and model.metadata.get("projection") != tuned:
        # a model built before its projection was tuned: the recipe's settings hold (new builds store them)
        model.metadata["projection"] = dict(tuned)
    return model


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = a["modules"]["model"]["state_dict"], b["modules"]["model"]["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _complete_payload(file: Path, device: torch.device) -> dict[str, Any] | None:
    """The cached checkpoint if it holds a finished model, else ``None`` (missing, partial or corrupted)."""
    if not file.is_file():
        return None
    try:
        payload = load_checkpoint(file, map_location=device)
    except CheckpointError:
        return None
    return payload if payload.get("complete", False) else None


def build(name: str, *, device: str | torch.device = "cpu", force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train zoo model ``name`` from its recipe into the cache (resuming an interrupted build), whether or not
    the package ships weights for it (those are never touched). Returns its quality metrics."""
    entry = _entry(name)
    file = path(name)
    device = resolve_device(device)
    with file_lock(file):
        if force and file.exists():
            file.unlink()
        if file.exists():
            try:
                ckpt = load_checkpoint(file)
            except CheckpointError:
                # A corrupted cache entry holds nothing worth keeping: move it aside and retrain.
                file.rename(file.with_suffix(f".corrupt-{int(time.time())}"))
            else:
                _check_spec(name, ckpt["metadata"], file)
                if ckpt.get("complete"):
                    return dict(ckpt["metadata"].get("quality", {}))
        _train(entry, file, device, progress)
        return dict(load_checkpoint(file)["metadata"].get("quality", {}))


def _train(entry: ZooEntry, file: Path, device: torch.device, progress: bool) -> None:
    from manifold_defense.generators.train import train_vae, train_wgan
    from manifold_defense.training import train_classifier

    train = data.load(entry.dataset, "train")
    test = data.load(entry.dataset, "test")
    cfg = dict(entry.train_config)
    # Initial weights come from the global generator: seed it, or every build starts from different weights.
    torch.manual_seed(cfg.get("seed", 0))
    model = build_model(entry.arch, entry.arch_config).to(device)
    t0 = time.perf_counter()
    meta = {"zoo_name": entry.name, "zoo_spec": entry.spec(), "dataset": entry.dataset,
            "description": entry.description, "kind": entry.kind, "architecture": entry.arch,
            "latent_dim": getattr(model, "latent_dim", None)}
    if entry.trainer == "vae" and entry.arch == "class-vaes":
        meta["num_classes"] = model.num_classes
        train_vae(model, train.images, train.labels, x_test=test.images, y_test=test.labels, path=file, metadata=meta,
                  progress=progress, **cfg)
    elif entry.trainer == "vae":
        train_vae(model, train.images, x_test=test.images, path=file, metadata=meta, progress=progress, **cfg)
    elif entry.trainer == "encoder":
        from manifold_defense.generators.encoder import train_encoder

        base = get(cfg.pop("base"), device=device, progress=progress)
        model.blocks.load_state_dict(base.blocks.state_dict())
        train_encoder(model, train.images, x_test=test.images, path=file, metadata=meta, progress=progress, **cfg)
    elif entry.trainer == "wgan":
        critic_spec = entry.extra["critic"]
        critic = build_model(critic_spec["arch"], critic_spec["config"]).to(device)
        cfg["betas"] = tuple(cfg["betas"])
        train_wgan(model, critic, train.images, x_test=test.images, path=file, metadata=meta, progress=progress,
                   **cfg)
    else:
        adversary = cfg.pop("adversary", None)
        if adversary is not None:  # a robust classifier: Madry PGD adversarial training
            from manifold_defense.training import MadryObjective

            cfg["objective"] = MadryObjective(**adversary)
        if "objective" in cfg:
            cfg["objective"] = objective_from_config(cfg["objective"], device=device, progress=progress)
        init = cfg.pop("init", None)
        if init is not None:  # a warm start (a resumed build then continues from its own checkpoint)
            start = get(init, device=device, progress=progress)
            model.load_state_dict(start.state_dict())
            meta["init"] = {"zoo_name": init, "state_digest": state_digest(start)}
        train_classifier(model, train.images, train.labels, test=(test.images, test.labels), path=file,
                         metadata=meta, progress=progress, **cfg)
    # Record the wall time of this (possibly resumed) build next to the quality numbers.
    ckpt = load_checkpoint(file)
    history = ckpt["metadata"].get("history", [])
    ckpt["metadata"]["train_seconds"] = float(sum(h.get("seconds", 0.0) for h in history))
    ckpt["metadata"]["last_build_wall_seconds"] = time.perf_counter() - t0
    if "projection" in entry.extra:  # tuned projection settings travel in the checkpoint (ProjectionConfig.for_generator)
        ckpt["metadata"]["projection"] = dict(entry.extra["projection"])
    save_checkpoint(file, ckpt)


def status() -> list[dict[str, Any]]:
    """One row per zoo entry: name, kind, dataset, whether shipped or cached, training time and quality
    (the shipped weights' figures when shipped: what ``get`` loads by default)."""
    rows, shipped = [], manifest()
    for name, entry in ENTRIES.items():
        file = path(name)
        row: dict[str, Any] = {"name": name, "kind": entry.kind, "dataset": entry.dataset,
                               "budget_minutes": entry.budget_minutes, "description": entry.description,
                               "state": "not built", "path": str(file)}
        if file.is_file():
            try:
                ckpt = load_checkpoint(file)
                meta = ckpt["metadata"]
                done = meta.get("epochs_done")
                row["state"] = "built" if ckpt.get("complete") else f"partial ({done} epochs)"
                row["quality"] = meta.get("quality", {})
                row["train_seconds"] = meta.get("train_seconds")
            except CheckpointError as exc:
                row["state"] = f"corrupted ({exc})"
        if name in shipped:
            row["state"] = "shipped" + ("" if row["state"] == "not built" else f" + cache {row['state']}")
            row["quality"] = dict(shipped[name].get("quality", {}))
            row["train_seconds"] = shipped[name].get("train_seconds")
        rows.append(row)
    return rows
