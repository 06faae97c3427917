"""Robustness evaluation, sanity checks and reports."""

from manifold_defense.eval.robustness import (
    AttackSpec,
    Evaluation,
    evaluate,
    merge_records,
    sanity_checks,
    write_report,
)

__all__ = ["AttackSpec", "Evaluation", "evaluate", "sanity_checks", "write_report", "merge_records"]
