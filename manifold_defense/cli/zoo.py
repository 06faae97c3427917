"""``manifold-defense zoo``: list, build, locate and look at the model zoo."""

from __future__ import annotations

import argparse
import json
import os
import time

from manifold_defense.cli.common import add_device, check_device, check_output_file, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command and its subcommands."""
    z = sub.add_parser("zoo", help="list or build the cached model zoo")
    zs = z.add_subparsers(dest="zoo_cmd", required=True)
    zl = zs.add_parser("list", help="models, whether built, training time and quality")
    zl.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    zb = zs.add_parser("build", help="train models into the cache (resumes an interrupted build)")
    zb.add_argument("names", nargs="*", help="zoo names (see zoo list)")
    zb.add_argument("--all", action="store_true", help="build every model")
    zb.add_argument("--force", "--retrain", action="store_true",
                    help="train from the recipe even if cached (shipped weights are never touched; load your build "
                         "with zoo.get(NAME, source='cache'))")
    zb.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(zb)
    zship = zs.add_parser("ship", help="(maintainers) copy finished cached builds into the package's shipped "
                                       "weights and manifest")
    zship.add_argument("names", nargs="+", help="zoo names")
    zship.add_argument("--quality-json", default=None,
                       help="benchmarks/results/generator_quality.json: add its FID, precision, recall, density and "
                            "coverage to the generators' manifest entries (default: none)")
    zp = zs.add_parser("path", help="cache file of a model")
    zp.add_argument("name", help="zoo name")
    zsh = zs.add_parser("show", help="PNG grid of samples from a built zoo generator")
    zsh.add_argument("name", help="zoo name of a generator")
    zsh.add_argument("--out", default=None, help="PNG path (default: NAME.png)")
    zsh.add_argument("--rows", type=positive_int, default=4, help="rows of samples")
    zsh.add_argument("--cols", type=positive_int, default=12, help="samples per row")
    zsh.add_argument("--seed", type=int, default=0, help="seed of the latent samples")
    add_device(zsh)
    z.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from manifold_defense import data, zoo
    from manifold_defense.validation import InputError
    from manifold_defense.viz import generator_grid

    if args.zoo_cmd == "list":
        rows = zoo.status()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'name':22} {'state':18} {'train s':>8}  quality")
        for r in rows:
            q = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("quality", {}).items())
            ts = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
            print(f"{r['name']:22} {r['state']:18} {ts:>8}  {q}")
        return 0
    if args.zoo_cmd == "path":  # where zoo.get loads it from: the shipped file, else the cache (built or not)
        from manifold_defense.shipped import WEIGHTS_DIR, manifest

        cached = zoo.path(args.name)
        shipped = manifest().get(args.name)
        if shipped is not None and os.environ.get("MANIFOLD_DEFENSE_ZOO_SOURCE", "auto") != "cache":
            print(WEIGHTS_DIR / shipped["file"])
        else:
            print(cached if cached.is_file() else f"{cached} (not built yet: manifold-defense zoo build {args.name})")
        return 0
    if args.zoo_cmd == "ship":
        from manifold_defense.shipped import WEIGHTS_DIR, export

        measured = {}
        if args.quality_json:
            try:
                measured = json.loads(open(args.quality_json, encoding="utf-8").read())["generators"]
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(f"--quality-json {args.quality_json}: not a generator_quality.json ({exc})") from exc
        for name in args.names:
            spec = zoo.ENTRIES[name].spec() if name in zoo.ENTRIES else None
            if spec is None:
                raise InputError(f"unknown zoo model {name!r}; available: {', '.join(zoo.names())}")
            row = measured.get(name, {})
            quality = {k: row[k] for k in ("fid", "precision", "recall", "density", "coverage") if k in row}
            if quality:
                quality["fid_features"] = "mnist-classifier-c penultimate (benchmarks/generator_quality.py)"
            entry = export(name, zoo.path(name), spec, quality=quality)
            print(f"{name}: {entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:16]}… → {WEIGHTS_DIR}")
        return 0
    device = check_device(args.device)
    if args.zoo_cmd == "show":
        entry = zoo.ENTRIES.get(args.name)
        if entry is None or entry.kind != "generator":
            raise InputError(f"{args.name} is not a generator in the zoo; `zoo list` shows classifier accuracies")
        out = check_output_file(args.out or f"{args.name}.png")
        model = zoo.get(args.name, device, train=False)
        test = data.load(entry.dataset, "test", limit=args.cols).images
        generator_grid(model, out, rows=args.rows, cols=args.cols, seed=args.seed, test_images=test,
                       title=f"{args.name}: {entry.description}")
        print(f"wrote {out}")
        return 0
    names = zoo.names() if args.all else args.names
    if not names:
        raise InputError("zoo build: give model names or --all")
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        raise InputError(f"unknown zoo model {unknown[0]!r}; available: {', '.join(zoo.names())}")
    for name in names:
        t0 = time.perf_counter()
        quality = zoo.build(name, device=device, force=args.force, progress=not args.quiet)
        print(f"{name}: {json.dumps(quality)} ({time.perf_counter() - t0:.1f} s)")
    return 0
