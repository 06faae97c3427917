"""Model zoo: trained generators and classifiers, shipped with the package or trained on first use and cached.

``get(name)`` returns a trained model in eval mode: the weights shipped inside the package when there are
(hash-verified, ``manifold_defense.shipped``), else the cached build under
``$MANIFOLD_DEFENSE_CACHE/zoo/NAME.pt`` (default ``~/.cache/manifold-defense``), else it trains the recipe
(seeded, a checkpoint per epoch, resumable) into the cache. Everything loads with
``torch.load(weights_only=True)``. No weights are ever downloaded.
"""

from __future__ import annotations

import os
import time
import warnings
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
from manifold_defense.zoo_catalog import ENTRIES, ZooEntry

__all__ = ["ZooEntry", "ENTRIES", "get", "build", "path", "status", "names", "objective_from_config"]

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
