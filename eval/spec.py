"""An attack as an evaluation runs it: name, attack, budgets, threat model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from manifold_defense.attacks.base import Attack

__all__ = ["AttackSpec"]


@dataclass
class AttackSpec:
    """An attack to run at several budgets; ``threat`` groups attacks for the worst case ('linf', 'l2',
    'on_manifold' ...). ``iterative=False`` marks single-step attacks for the iterative-vs-single check. An
    escalation round of a suite names the attack it escalates (``escalates``) and its ``round`` (1, 2 …)."""

    name: str
    attack: Attack
    epsilons: Sequence[float]
    threat: str
    iterative: bool = True
    escalates: str | None = None
    round: int = 0
