"""Architectures by name: every model the library saves rebuilds itself from a checkpoint.

A checkpoint stores a module's ``arch_name`` and constructor arguments (``model.config``);
``load_model`` looks the name up here, builds the module and loads its weights
(``torch.load(weights_only=True)``), so a caller needs no knowledge of how the model was made.
The library's own classifiers and generators are registered on import; ``register_architecture``
adds a user's class.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch
from torch import nn

from manifold_defense import classifiers
from manifold_defense.checkpoint import CheckpointError, load_checkpoint, model_payload, save_checkpoint
from manifold_defense.generators import cifar, class_conditional, dcgan, dip, encoder, random_relu, vae

__all__ = ["ARCHITECTURES", "register_architecture", "build_model", "save_model", "load_model", "model_from_payload"]

#: architecture name → class (constructor keyword arguments are the model's ``config``)
ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register_architecture(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model class rebuildable from ``(name, model.config)``.

    The class must store its constructor keyword arguments (plain Python values) in ``self.config``.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
            raise ValueError(f"architecture name {name!r} is already registered to {ARCHITECTURES[name].__name__}")
        ARCHITECTURES[name] = cls
        cls.arch_name = name  # type: ignore[attr-defined]
        return cls

    return deco


for _cls in (classifiers.DefenseGANClassifier, classifiers.MadryMNISTClassifier, classifiers.DigitsCNN, vae.VAE,
             dcgan.DefenseGANGenerator, dcgan.WGANCritic, dip.DeepImagePrior, encoder.LatentEncoder, encoder.EncodedGenerator,
             random_relu.RandomReLUGenerator, cifar.DCGANGenerator, cifar.DCGANCritic, class_conditional.ClassVAEs):
    register_architecture(_cls.arch_name)(_cls)


def build_model(arch: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a registered architecture by name."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](**dict(config or {}))


def save_model(path: str | os.PathLike, model: nn.Module, metadata: Mapping[str, Any] | None = None) -> None:
    """Save a registered model with its architecture and ``metadata`` (atomically)."""
    save_checkpoint(path, model_payload({"model": model}, {}, metadata or {}, complete=True))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", *, key: str = "model") -> nn.Module:
    """Rebuild and load the model saved in ``path``; its metadata is attached as ``model.metadata``."""
    return model_from_payload(load_checkpoint(path, map_location=device), device, key=key, source=path)


def model_from_payload(payload: Mapping[str, Any], device: str | torch.device = "cpu", *, key: str = "model",
                       source: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild a model from an already loaded checkpoint ``payload`` (see ``load_model``)."""
    entry = payload["modules"].get(key)
    if entry is None:
        raise CheckpointError(f"{source} holds no module named {key!r} (has: {', '.join(payload['modules'])})")
    model = build_model(entry["arch"], entry["config"])
    try:
        model.load_state_dict(entry["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not match architecture {entry['arch']}: {exc}") from exc
    model.metadata = dict(payload["metadata"])  # type: ignore[assignment]
    model.metadata["complete"] = bool(payload.get("complete", False))
    return model.to(device).eval()
