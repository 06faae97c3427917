"""Weights shipped inside the package, verified against a manifest of sha256 hashes. Nothing is downloaded.

``manifold_defense/weights/manifest.json`` lists, per zoo name: the file, its sha256 and size, the sha256 of
the recipe it was trained from (``ZooEntry.spec``), the library version, the
training seconds and the model's quality figures. A listed file that is missing, whose hash differs
(tampered, truncated) or whose recipe is not the library's is a ``CheckpointError``: never a silent
retrain over it. Files are model-only checkpoints (no optimiser state), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from manifold_defense._version import __version__
from manifold_defense.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint

__all__ = ["WEIGHTS_DIR", "manifest", "recipe_digest", "file_sha256", "shipped_payload", "export"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else WEIGHTS_DIR


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_digest(spec: Mapping[str, Any]) -> str:
    """sha256 of a zoo recipe (canonical JSON): shipped weights name the recipe they were trained from."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def manifest(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's entries by zoo name ({} when nothing is shipped)."""
    path = _root(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the shipped-weights manifest {path} is unreadable: {exc}") from exc
    bad = [n for n, e in entries.items() if not {"file", "sha256", "recipe_sha256"} <= set(e)]
    if bad:
        raise CheckpointError(f"the shipped-weights manifest {path} has incomplete entries: {bad}")
    return entries


def shipped_payload(name: str, spec: Mapping[str, Any], device: str | torch.device = "cpu",
                    root: str | Path | None = None) -> dict[str, Any] | None:
    """The verified checkpoint of zoo model ``name`` if the package ships it, else ``None``."""
    entry = manifest(root).get(name)
    if entry is None:
        return None
    file = _root(root) / entry["file"]
    fix = f"reinstall the package, or train it from its recipe: `manifold-defense zoo build {name} --retrain`"
    if not file.is_file():
        raise CheckpointError(f"shipped weights of {name} are listed in the manifest but missing ({file}); {fix}")
    digest = file_sha256(file)
    if digest != entry["sha256"]:
        raise CheckpointError(f"shipped weights of {name} ({file}) do not match the manifest's sha256 "
                              f"({digest[:12]}… vs {entry['sha256'][:12]}…): the file is tampered or truncated; {fix}")
    if entry["recipe_sha256"] != recipe_digest(spec):
        raise CheckpointError(f"shipped weights of {name} were trained from another recipe than this library "
                              f"version's; {fix}")
    payload = load_checkpoint(file, map_location=device)
    payload["metadata"] = {**payload["metadata"], "source": "shipped", "sha256": digest}
    return payload


def export(name: str, checkpoint: str | Path, spec: Mapping[str, Any], root: str | Path | None = None,
           quality: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the model of a finished zoo ``checkpoint`` (no optimiser state) into the shipped weights and
    record it in the manifest; returns its manifest entry. For maintainers: ``manifold-defense zoo ship``."""
    payload = load_checkpoint(checkpoint)
    if not payload.get("complete"):
        raise CheckpointError(f"{checkpoint} is not a finished model; build it first")
    meta = dict(payload["metadata"])
    keep = {k: meta[k] for k in ("zoo_name", "zoo_spec", "dataset", "description", "kind", "architecture",
                                 "latent_dim", "quality", "train_seconds", "history", "library_version",
                                 "projection", "config", "init", "benchmark", "guard") if k in meta}
    slim = {**payload, "modules": {"model": payload["modules"]["model"]}, "state": {}, "metadata": keep}
    root = _root(root)
    root.mkdir(parents=True, exist_ok=True)
    file = root / f"{name}.pt"
    save_checkpoint(file, slim)
    entries = manifest(root)
    entries[name] = {"file": file.name, "sha256": file_sha256(file), "bytes": file.stat().st_size,
                     "recipe_sha256": recipe_digest(spec), "library_version": __version__,
                     "trained_with_library_version": meta.get("library_version"),
                     "train_seconds": meta.get("train_seconds"),
                     "quality": {**meta.get("quality", {}), **dict(quality or {})}}
    atomic_write_text(root / MANIFEST, json.dumps({"models": dict(sorted(entries.items()))}, indent=2) + "\n")
    return entries[name]
