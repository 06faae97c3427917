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
    from manifold_defense.checkpoint import CheckpointError
    from manifold_defense.data import DataNotFoundError
    from manifold_defense.eval.records import IncompleteEvaluation
    from manifold_defense.validation import InputError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported in one line)
        return int(exc.code or 0)
    try:
        return int(args.run(args) or 0)
    except (InputError, CheckpointError, DataNotFoundError, IncompleteEvaluation) as exc:
        print(f"manifold-defense: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
