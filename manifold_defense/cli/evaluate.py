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

    listing = "\n".join(f"  {k:22s} {a.threat:12s} default eps {','.join(map(str, a.epsilons)):14s} {a.description}"
                        for k, a in ATTACKS.items())
    p = sub.add_parser("evaluate", help="robustness evaluation: attacks, epsilons, sanity checks, reports",
                       description="Attacks (name, threat model, default epsilons):\n" + listing)
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
    p.add_argument("--attack", action="append", default=None, metavar="NAME[:EPS,...]",
                   help="repeatable, e.g. --attack pgd_linf:0.1,0.3 --attack latent_reparam_l2:3.8 (default: "
                        "fgsm_transfer:0.3, pgd_linf:0.3, pgd_l2:3.8, and with a generator latent_reparam_l2:3.8, "
                        "on_manifold:1.5)")
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
    p.add_argument("--attempts", type=positive_int, default=1,
                   help="score every input this many times: a randomised defense's N-attempt robust accuracy")
    p.add_argument("--decision-subset", type=non_negative_int, default=16,
                   help="samples for the HopSkipJump sanity check (0: skip it)")
    p.add_argument("--out", default="manifold-defense-eval", help="output folder (records, reports, plots)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    p.set_defaults(run=run)


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
    if args.projection == "none":
        refuse_unused(args, set(), {"dead_zone": "--dead-zone", "surrogate": "--surrogate"}, "--projection none")
    if args.stop is not None and args.stop <= args.start:
        raise InputError(f"--stop ({args.stop}) must be greater than --start ({args.start})")
    conditional = {name for name, _ in attacks or [] if name.endswith("_cc")}
    needs_gen = args.projection != "none" or any(name.startswith(("on_manifold", "overpowered", "latent"))
                                                 for name, _ in attacks or [] if name not in conditional)
    if needs_gen and args.generator is None:
        raise InputError("this evaluation needs --generator (a zoo name or checkpoint)")
    if conditional and args.class_generator is None:
        raise InputError(f"{', '.join(sorted(conditional))} need --class-generator (e.g. mnist-class-vaes)")
    if args.class_generator is not None and not conditional:
        raise InputError("--class-generator is only used by on_manifold_cc and overpowered_cc (--attack NAME)")
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
    if attacks is None:
        attacks = [("fgsm_transfer", [0.3]), ("pgd_linf", [0.3]), ("pgd_l2", [3.8])]
        attacks += [("latent_reparam_l2", [3.8]), ("on_manifold", [1.5])] if gen is not None else []
    model = clf
    if args.projection != "none":
        cfg = ProjectionConfig.preset(args.projection, gen)
        if args.dead_zone is not None:
            cfg = dataclasses.replace(cfg, dead_zone=args.dead_zone)
        model = DefendedModel(clf, gen, cfg).eval()
    surrogate = ProjectionConfig.preset(args.surrogate, gen) if args.surrogate else None
    budget_name = "quick" if args.quick else args.budget or "default"
    budget = AttackBudget.named(budget_name)
    specs = [build_attack(name, eps, classifier=clf, generator=cc_gen if name in conditional else gen,
                          surrogate=surrogate, budget=budget) for name, eps in attacks]
    world, rank, _ = init_from_environment(str(device))  # torchrun: every rank attacks its share of the batches
    try:
        if rank == 0:
            print(f"evaluate: {args.classifier} behind projection '{args.projection}' on {len(x)} {dataset} test "
                  f"images, {budget_name} budget{f', {world} processes' if world > 1 else ''}; records in {out} (a rerun "
                  "resumes; another configuration is refused)")
        ev = evaluate(model, x, y, specs, batch_size=args.batch_size, out_dir=out, start=args.start, stop=args.stop,
                      progress=not args.quiet and rank == 0, attempts=args.attempts, dataset=dataset, judges=judges)
        if rank == 0:
            # the checks' own attacks are recorded too (per shard start): a killed run resumes them
            sanity_checks(ev, model, x, y, decision_subset=args.decision_subset, batch_size=args.batch_size,
                          out_dir=out / "sanity" / f"from_{args.start}")
            paths = write_report(ev, out, title=f"{args.classifier} / {args.projection} projection")
            print((out / "report.md").read_text())
            print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - t0:.0f} s)")
    finally:
        shutdown()
    return 0
