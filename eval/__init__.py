"""Robustness evaluation, sanity checks, reports and the named attack suite."""

from manifold_defense.eval.robustness import (
    AttackSpec,
    Evaluation,
    evaluate,
    merge_records,
    sanity_checks,
    write_report,
)
from manifold_defense.eval.suite import ATTACKS, AttackBudget, build_attack, parse_attack

__all__ = ["AttackSpec", "Evaluation", "evaluate", "sanity_checks", "write_report", "merge_records", "ATTACKS",
           "AttackBudget", "build_attack", "parse_attack"]
