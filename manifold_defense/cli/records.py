"""``manifold-defense records``: watch an evaluation folder and join the shards of one evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command and its subcommands."""
    r = sub.add_parser("records", help="what an evaluation folder holds; join shards of one evaluation")
    rs = r.add_subparsers(dest="records_cmd", required=True)
    st = rs.add_parser("status", help="per column: samples recorded, correct / broken, seconds, samples missing "
                                      "(counts only: no accuracy before a column is complete)")
    st.add_argument("folder", help="an evaluate --out folder")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mg = rs.add_parser("merge", help="join shard folders (evaluate --start/--stop) into a new folder, after checking "
                                     "they ran the same evaluation and do not overlap")
    mg.add_argument("shards", nargs="+", help="shard folders")
    mg.add_argument("--out", required=True, help="new folder (refused if it already holds records)")
    r.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from manifold_defense.eval.records import merge_records, record_status
    from manifold_defense.validation import InputError

    if args.records_cmd == "status":
        status = record_status(args.folder)
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        print(f"{status['folder']}: {status['n']} samples in batches of {status['batch_size']}, "
              f"{status['attempts']} attempt(s); an attack with no finished batch is not listed")
        print(f"{'column':40} {'recorded':>8} {'correct/broken':>14} {'seconds':>9} {'batches':>7}  missing")
        for c in status["columns"]:
            hits = c.get("correct", c.get("broken"))
            print(f"{c['column']:40} {c['recorded']:>8} {hits:>14} {c['seconds']:>9.0f} {c['batches']:>7}  "
                  f"{c['missing'] or '-'}")
        return 0
    out = Path(args.out)
    if any(Path(s).resolve() == out.resolve() for s in args.shards):
        raise InputError(f"--out {out} is one of the shards: merge into a new folder")
    merged = merge_records(args.shards, out)
    print(f"merged {len(merged)} records of {len(args.shards)} shards into {out}; rerun `manifold-defense evaluate` "
          f"with the same settings and --out {out} (no --start/--stop) to report them (it attacks only what is "
          "missing, then runs the sanity checks)")
    return 0
