"""Adversarial training on and off the manifold: the resumable, DDP-ready loop and its objectives."""

from manifold_defense.training.guard import OverfitGuard
from manifold_defense.training.loop import random_shift, train_classifier
from manifold_defense.training.objectives import (
    PRESETS,
    MadryObjective,
    OnManifoldObjective,
    RobustManifoldObjective,
    StandardObjective,
    TrainingObjective,
    CombinedObjective,
    FastObjective,
    TradesObjective,
    default_eta,
    objective_preset,
)

__all__ = ["train_classifier", "random_shift", "OverfitGuard", "TrainingObjective", "StandardObjective", "MadryObjective",
           "TradesObjective", "FastObjective",
           "OnManifoldObjective", "RobustManifoldObjective", "CombinedObjective", "objective_preset", "default_eta",
           "PRESETS"]
