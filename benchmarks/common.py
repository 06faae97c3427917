"""Shared by the benchmark scripts: the provenance block every result JSON carries, and plotting helpers.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``: ``from common import provenance``.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*cmd: str) -> str | None:
    """``git CMD`` run in the repository root; its stdout, or None when git is missing, fails or times out."""
    try:
        res = subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return res.stdout if res.returncode == 0 else None


def _json_safe(value):
    """``value`` with paths (and anything else JSON cannot hold) as strings, tuples and sets as lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_json_safe(v) for v in value), key=repr)
    return str(value)


def _tree_state() -> tuple[str | None, str | None]:
    """``(HEAD commit, porcelain status of tracked files)`` now."""
    return _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")


def _code_state(state: tuple[str | None, str | None]) -> tuple[str | None, list[str]]:
    """The commit and the changed tracked files outside ``benchmarks/results/`` (what a run writes there — its
    JSON, its records — is its output, not a change to the code that ran)."""
    head, status = state
    lines = [] if status is None else [ln for ln in status.splitlines() if "benchmarks/results/" not in ln]
    return head, lines


#: the tree when the benchmark started (every script imports this module first): what actually ran
_AT_START = _tree_state()


def provenance(args) -> dict:
    """Where a result came from: commit (and whether tracked files had changes), time, command line,
    parsed arguments, torch version and threads, library version. Never raises; unknown parts say so.

    The commit is the one checked out when the run *started*; the tree counts as dirty if it had changes then
    or if the commit or the tracked files changed while the run went on (a run of hours must not be credited
    to a commit made, or a clean state restored, in the middle of it)."""
    head, status = _AT_START
    if status is not None and _code_state(_tree_state()) != _code_state(_AT_START):
        status = status + "\n(the tree changed while the run went on)"
    try:
        config = _json_safe(vars(args)) if args is not None else {}
    except TypeError:
        config = {"args": str(args)}
    try:
        import torch

        torch_version, threads = str(torch.__version__), int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 — provenance must never break a finished benchmark run
        torch_version, threads = "unknown", None
    try:
        from manifold_defense._version import __version__ as library_version
    except Exception:  # noqa: BLE001
        library_version = "unknown"
    return {
        "git_commit": head.strip() if head and head.strip() else "unknown",
        "git_dirty": None if status is None else bool(status.strip()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "config": config,
        "torch": torch_version,
        "torch_threads": threads,
        "library_version": library_version,
    }


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the benchmarks never open a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """Tight layout, a 120-dpi PNG at ``path``, the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def interval_yerr(values, intervals) -> list[list[float]]:
    """matplotlib's asymmetric ``yerr`` from values and their (low, high) intervals (e.g. Wilson's)."""
    # max(0, ·): a value stored in float32 can sit a rounding error outside its (float64) interval
    return [[max(0.0, v - lo) for v, (lo, _) in zip(values, intervals)],
            [max(0.0, hi - v) for v, (_, hi) in zip(values, intervals)]]


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (worker processes), user + system."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
