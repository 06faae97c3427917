"""Robustness evaluation: named, versioned attack suites run as a survivor cascade with escalation to
convergence, fail-closed records, N-attempt numbers, local workers and torchrun shards; sanity checks that
can fail; reports with RobustBench's fields; and the registry of named attacks."""

from manifold_defense.eval.records import IncompleteEvaluation, RecordError, merge_records
from manifold_defense.eval.registry import ATTACKS, AttackBudget, RegisteredAttack, build_attack, parse_attack
from manifold_defense.eval.report import write_report
from manifold_defense.eval.robustness import Evaluation, wilson_interval
from manifold_defense.eval.runner import WorkerError, evaluate
from manifold_defense.eval.sanity import gradient_agreement, sanity_checks
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.eval.suites import SUITES, Plan, Suite, build_plan, default_epsilons

__all__ = ["AttackSpec", "Evaluation", "evaluate", "sanity_checks", "write_report", "merge_records", "ATTACKS",
           "AttackBudget", "RegisteredAttack", "build_attack", "parse_attack", "RecordError", "IncompleteEvaluation",
           "wilson_interval", "gradient_agreement", "SUITES", "Suite", "Plan", "build_plan", "default_epsilons",
           "WorkerError"]
