"""Robustness evaluation, sanity checks, reports and the registry of named attacks."""

from manifold_defense.eval.robustness import (
    AttackSpec,
    Evaluation,
    evaluate,
    merge_records,
    sanity_checks,
    write_report,
)
from manifold_defense.eval.registry import ATTACKS, AttackBudget, RegisteredAttack, build_attack, parse_attack

__all__ = ["AttackSpec", "Evaluation", "evaluate", "sanity_checks", "write_report", "merge_records", "ATTACKS",
           "AttackBudget", "RegisteredAttack", "build_attack", "parse_attack"]
