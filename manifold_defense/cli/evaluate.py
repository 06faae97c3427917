"""``manifold-defense evaluate``: a robustness evaluation with the registry's attacks, resumable and shardable."""

from __future__ import annotations

import argparse
import dataclasses
import time

from manifold_defense.cli.common import (
    add_device,
    check_device,
    check_output_dir,
    load_role,
    non_negative_float,
    non_negative_int,
    positive_int,
    refuse_unused,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    from manifold_defense.defended import PROJECTIONS
    from manifold_defense.eval.registry import ATTACKS
    from manifold_defense.eval.suites import SUITES

    suites = "\n".join(f"  {s.name:10s} v{s.version}: {s.description}; " + "; ".join(
        f"{t}: {', '.join(st.attack for st in stages)}" for t, stages in s.stages.items()) for s in SUITES.values())
    listing = "\n".join(f"  {k:22s} {a.threat:12s} default eps {','.join(map(str, a.epsilons)):14s} {a.description}"
                        for k, a in ATTACKS.items())
    p = sub.add_parser("evaluate", help="robustness evaluation: attack suites, sanity checks, reports",
                       description="Suites (--suite):\n" + suites + "\n\nSingle attacks (--attack NAME[:EPS,...]; "
                                   "name, threat model, default epsilons):\n" + listing)
    p.add_argument("--classifier", required=True, help="zoo name or checkpoint path of the classifier")
    p.add_argument("--generator", default=None, help="zoo name or checkpoint path (needed for a defense; default: none)")
    p.add_argument("--class-generator", default=None,
                   help="class-conditional generator (zoo name or checkpoint) of on_manifold_cc / overpowered_cc "
                        "(default: none)")
    p.add_argument("--judge", action="append", default=None, metavar="CLASSIFIER",
                   help="an independent classifier (zoo name or checkpoint) that labels every adversarial input, to "
                        "show whether the label held; repeatable (default: none)")
    p.add_argument("--projection", choices=[*PROJECTIONS, "none"], default="default",
                   help="the defense's projection; 'none' evaluates the undefended classifier")
    p.add_argument("--dead-zone", type=non_negative_float, default=None,
                   help="dead-zone width of the projection loss (default: the projection's own)")
    p.add_argument("--surrogate", choices=PROJECTIONS, default=None,
                   help="projection adaptive attacks craft on (default: the defense's own)")
    p.add_argument("--suite", choices=sorted(SUITES), default=None,
                   help="the attacks: a named, versioned suite run as a survivor cascade with escalation to "
                        "convergence (default: standard; rand for --stochastic projections)")
    p.add_argument("--epsilon", action="append", default=None, metavar="THREAT=EPS[,EPS...]",
                   help="a suite's budgets per threat model, repeatable, e.g. --epsilon linf=0.3 --epsilon l2=2.0 "
                        "(default: linf 0.3, l2 3.8, on_manifold 1.5 on MNIST; linf 0.3, l2 1.0, on_manifold 1.0 on "
                        "the 8x8 digits); a threat model not given keeps its default")
    p.add_argument("--threat", action="append", default=None, choices=["linf", "l2", "on_manifold"],
                   help="evaluate only these threat models of the suite (repeatable; default: all of them)")
    p.add_argument("--attack", action="append", default=None, metavar="NAME[:EPS,...]",
                   help="instead of a suite, these attacks only, each on every sample (repeatable, e.g. --attack "
                        "pgd_linf:0.1,0.3): the report says the worst case covers only them")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="local worker processes sharing the batches (default: 1, this process)")
    p.add_argument("--n", "--num-images", dest="n", type=positive_int, default=100,
                   help="first N test images (write --num-images under torchrun, whose own options start with --n)")
    p.add_argument("--start", type=non_negative_int, default=0, help="shard: first index")
    p.add_argument("--stop", type=positive_int, default=None, help="shard: one past the last index (default: N)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per attack batch")
    p.add_argument("--dataset", choices=["digits", "mnist", "cifar10"], default=None,
                   help="test set (default: from the classifier's input shape)")
    p.add_argument("--data-path", default=None, help="MNIST file or folder (default: $MANIFOLD_DEFENSE_DATA)")
    p.add_argument("--budget", choices=["quick", "default", "full"], default=None,
                   help="attack budgets: quick (smoke runs, not publishable), default, full (AutoAttack's published "
                        "100 iterations, EOT 20; slow) (default: default)")
    p.add_argument("--quick", action="store_true", help="the same as --budget quick")
    p.add_argument("--stochastic", action="store_true", default=None,
                   help="a randomised defense: the projection draws fresh restarts on every call (default suite: rand)")
    p.add_argument("--attempts", type=positive_int, default=None,
                   help="score every input this many times: a randomised defense's N-attempt robust accuracy "
                        "(default: the suite's: 5 for rand, else 1)")
    p.add_argument("--decision-subset", type=non_negative_int, default=16,
                   help="samples the white-box attacks left that the HopSkipJump sanity check attacks (0: skip it)")
    p.add_argument("--out", default="manifold-defense-eval", help="output folder (records, reports, plots)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    p.set_defaults(run=run)


def _epsilons(items: list[str] | None) -> dict[str, list[float]] | None:
    """``["linf=0.3", "l2=2,3.8"]`` → ``{"linf": [0.3], "l2": [2.0, 3.8]}``."""
    from manifold_defense.validation import InputError

    if not items:
        return None
    out: dict[str, list[float]] = {}
    for text in items:
        threat, sep, values = text.partition("=")
        try:
            eps = [float(v) for v in values.split(",") if v]
        except ValueError:
            eps = []
        if not sep or threat not in ("linf", "l2", "on_manifold") or not eps or min(eps) <= 0:
            raise InputError(f"--epsilon {text!r}: write THREAT=EPS[,EPS...] with THREAT linf, l2 or on_manifold and "
                             "every EPS > 0, e.g. --epsilon linf=0.3")
        if threat in out:
            raise InputError(f"--epsilon names {threat} twice")
        out[threat] = eps
    return out


def run(args: argparse.Namespace) -> int:
    """Run the command (every check before the first model is loaded or attacked)."""
    from manifold_defense import data
    from manifold_defense.defended import DefendedModel, ProjectionConfig
    from manifold_defense.eval import AttackBudget, build_attack, evaluate, parse_attack, sanity_checks, write_report
    from manifold_defense.protocols import ClassConditional
    from manifold_defense.validation import InputError

    from manifold_defense.distributed import init_from_environment, shutdown

    t0 = time.perf_counter()
    if args.quick and args.budget not in (None, "quick"):
        raise InputError(f"--quick contradicts --budget {args.budget}")
    device = check_device(args.device)
    out = check_output_dir(args.out)
    attacks = [parse_attack(text) for text in args.attack] if args.attack else None
    if attacks is not None:
        refuse_unused(args, set(), {"suite": "--suite", "epsilon": "--epsilon", "threat": "--threat"},
                      "--attack (single attacks instead of a suite)")
    epsilons = _epsilons(args.epsilon)
    if args.projection == "none":
        refuse_unused(args, set(), {"dead_zone": "--dead-zone", "surrogate": "--surrogate",
                                    "stochastic": "--stochastic"}, "--projection none")
    if args.stop is not None and args.stop <= args.start:
        raise InputError(f"--stop ({args.stop}) must be greater than --start ({args.start})")
    suite = args.suite or ("rand" if args.stochastic else "standard")
    conditional = {name for name, _ in attacks or [] if name.endswith("_cc")}
    needs_gen = args.projection != "none" or any(name.startswith(("on_manifold", "overpowered", "latent"))
                                                 for name, _ in attacks or [] if name not in conditional)
    if needs_gen and args.generator is None:
        raise InputError("this evaluation needs --generator (a zoo name or checkpoint)")
    if conditional and args.class_generator is None:
        raise InputError(f"{', '.join(sorted(conditional))} need --class-generator (e.g. mnist-class-vaes)")
    if args.class_generator is not None and not conditional:
        raise InputError("--class-generator is only used by on_manifold_cc and overpowered_cc (--attack NAME)")
    n = args.n if args.stop is None else min(args.n, args.stop)
    batches = -(-(n - args.start) // args.batch_size)
    if args.workers > max(batches, 1):
        raise InputError(f"--workers {args.workers} for {batches} batch(es) of {args.batch_size}: use at most "
                         f"{batches} workers, or a smaller --batch-size")
    clf = load_role(args.classifier, "classifier", device).eval()
    gen = load_role(args.generator, "generator", device).eval() if args.generator else None
    cc_gen = None
    if args.class_generator is not None:
        cc_gen = load_role(args.class_generator, "generator", device, flag="--class-generator").eval()
        if not isinstance(cc_gen, ClassConditional):
            raise InputError(f"--class-generator {args.class_generator} is not class-conditional (e.g. mnist-class-vaes)")
    judges = {spec: load_role(spec, "classifier", device, flag="--judge").eval() for spec in args.judge or []}
    dataset = args.dataset or {8: "digits", 28: "mnist", 32: "cifar10"}.get(tuple(clf.input_shape)[-1], "mnist")
    test = data.load(dataset, "test", path=args.data_path)
    x, y = test.images[: args.n], test.labels[: args.n]
    model = clf
    if args.projection != "none":
        cfg = ProjectionConfig.preset(args.projection, gen)
        if args.dead_zone is not None:
            cfg = dataclasses.replace(cfg, dead_zone=args.dead_zone)
        if args.stochastic:
            cfg = dataclasses.replace(cfg, stochastic=True)
        model = DefendedModel(clf, gen, cfg).eval()
    surrogate = ProjectionConfig.preset(args.surrogate, gen) if args.surrogate else None
    budget_name = "quick" if args.quick else args.budget or "default"
    budget = AttackBudget.named(budget_name)
    specs = None if attacks is None else [
        build_attack(name, eps, classifier=clf, generator=cc_gen if name in conditional else gen, surrogate=surrogate,
                     budget=budget) for name, eps in attacks]
    what = f"suite {suite}" if specs is None else f"{len(specs)} chosen attack(s) only"
    world, rank, _ = init_from_environment(str(device))  # torchrun: every rank attacks its share of the batches
    try:
        if rank == 0:
            print(f"evaluate: {args.classifier} behind projection '{args.projection}' on {len(x)} {dataset} test "
                  f"images, {what}, {budget_name} budget{f', {world} processes' if world > 1 else ''}"
                  f"{f', {args.workers} workers' if args.workers > 1 else ''}; records in {out} (a rerun resumes; "
                  "another configuration is refused)")
        ev = evaluate(model, x, y, specs, suite=None if specs is not None else suite, epsilons=epsilons,
                      threats=args.threat, budget=budget, classifier=clf, generator=gen, surrogate=surrogate,
                      batch_size=args.batch_size, out_dir=out, start=args.start, stop=args.stop,
                      progress=not args.quiet and rank == 0, attempts=args.attempts, dataset=dataset, judges=judges,
                      workers=args.workers)
        if rank == 0:
            # the checks' own attacks are recorded too (per sample set): a killed run resumes them
            sanity_checks(ev, model, x, y, decision_subset=args.decision_subset, batch_size=args.batch_size,
                          out_dir=out / "sanity")
            paths = write_report(ev, out, title=f"{args.classifier} / {args.projection} projection")
            print((out / "report.md").read_text())
            print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - t0:.0f} s)")
    finally:
        shutdown()
    return 0
