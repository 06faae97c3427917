"""Robustness evaluation, sanity checks and reports."""
