"""The ``manifold-defense`` command line: one small module per command, no domain logic here.

A user's mistake (a bad value, a missing file, a model in the wrong role, a GPU that is not there, a flag
the chosen preset ignores) is a one-line error and exit code 2, checked before any work starts.
"""

from __future__ import annotations

import sys
from typing import Sequence

from manifold_defense.cli import demo, evaluate, generate, records, recover, train, zoo
from manifold_defense.cli.common import Parser

__all__ = ["main", "build_parser"]


def build_parser() -> Parser:
    """The parser of every command."""
    from manifold_defense._version import __version__

    p = Parser(prog="manifold-defense", description="Defending image classifiers with generative models: projection "
                                                     "defenses, adaptive and on-manifold attacks, manifold adversarial "
                                                     "training, generative compressed sensing.")
    p.add_argument("--version", action="version", version=f"manifold-defense {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    demo.add_parser(sub)
    evaluate.add_parser(sub)
    records.add_parser(sub)
    zoo.add_parser(sub)
    recover.add_parser(sub)
    generate.add_parser(sub)
    train.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user's mistake prints one line on stderr and returns 2."""
    from manifold_defense.cache import ProjectionCacheError
    from manifold_defense.checkpoint import CheckpointError
    from manifold_defense.data import DataNotFoundError
    from manifold_defense.eval.records import IncompleteEvaluation
    from manifold_defense.eval.runner import WorkerError
    from manifold_defense.validation import InputError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported in one line)
        return int(exc.code or 0)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("\nmanifold-defense: interrupted; everything finished is saved — rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (InputError, CheckpointError, DataNotFoundError, IncompleteEvaluation, WorkerError,
            ProjectionCacheError) as exc:
        print(f"manifold-defense: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written (permissions, a full disk, a folder as a file)
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"manifold-defense: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a wrapped library's multi-line advice and colour codes dropped)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
