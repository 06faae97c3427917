"""manifold-defense: defending image classifiers with generative models.

Projection defenses (Defense-GAN, Samangouei et al. 2018; the Robust Manifold Defense, Ilyas et al.
2017), adaptive and on-manifold attacks, manifold adversarial training, and generative compressed
sensing (CSGM, ILO, Deep Image Prior) on one inversion core::

    from manifold_defense import DefendedModel, ProjectionConfig, zoo, data, evaluate, invert, guided_generate

The names load on first use (``import manifold_defense`` stays light); attacks live in
``manifold_defense.attacks``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from manifold_defense._version import __version__
from manifold_defense.validation import InputError, check_compatible

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily (below)
    from manifold_defense import data, zoo
    from manifold_defense.checkpoint import CheckpointError
    from manifold_defense.defended import DefendedModel, ProjectionConfig
    from manifold_defense.eval import build_attack, evaluate, sanity_checks, write_report
    from manifold_defense.guided import guided_generate
    from manifold_defense.inversion import invert

#: public name → module it lives in
_LAZY = {
    "DefendedModel": "manifold_defense.defended", "ProjectionConfig": "manifold_defense.defended",
    "evaluate": "manifold_defense.eval", "build_attack": "manifold_defense.eval",
    "sanity_checks": "manifold_defense.eval", "write_report": "manifold_defense.eval",
    "invert": "manifold_defense.inversion", "guided_generate": "manifold_defense.guided",
    "CheckpointError": "manifold_defense.checkpoint",
}
_SUBMODULES = ("data", "zoo", "attacks", "generators", "eval", "inversion", "operators", "training", "models",
               "recipes", "protocols")

__all__ = ["__version__", "InputError", "check_compatible", *_LAZY, "data", "zoo"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"manifold_defense.{name}")
    else:
        raise AttributeError(f"module 'manifold_defense' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
