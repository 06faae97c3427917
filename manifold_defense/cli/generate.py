"""``manifold-defense generate``: classifier-guided generation (ILO, Daras et al. 2021 §4) of every start image
towards every target class, judged by an independent classifier."""

from __future__ import annotations

import argparse
import json

from manifold_defense.cli.common import (
    add_device,
    check_device,
    check_output_dir,
    load_role,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_unused,
)

__all__ = ["add_parser", "run", "JUDGES", "GUIDES"]

#: per dataset: the default guide (a robust classifier) and the judges, in order of preference
GUIDES = {"digits": "digits-robust-l2", "mnist": "mnist-robust-l2"}
JUDGES = {"digits": ["digits-classifier", "digits-robust-l2"],
          "mnist": ["mnist-classifier-b", "mnist-classifier-c", "mnist-classifier-a"]}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    from manifold_defense.guided import METHODS

    p = sub.add_parser("generate", help="classifier-guided generation (ILO): steer start images to target classes",
                       description="Rows: start test images; columns: target classes. Writes grid.png, metrics.json "
                                   "and (with --frames) morph.gif. The judge is never the guiding classifier.")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits", help="start images")
    p.add_argument("--data-path", default=None, help="MNIST file or folder (default: $MANIFOLD_DEFENSE_DATA)")
    p.add_argument("--generator", default=None, help="zoo name or checkpoint (default: the dataset's VAE)")
    p.add_argument("--classifier", default=None,
                   help="guiding classifier, zoo name or checkpoint (default: the dataset's robust-l2 model)")
    p.add_argument("--judge", default=None,
                   help="independent classifier judging success (default: the dataset's first standard zoo "
                        "classifier that is not the guide)")
    p.add_argument("--method", choices=METHODS, default="ilo", help="ilo, latent (z only) or pixel (no generator)")
    p.add_argument("--n", type=positive_int, default=6, help="start images")
    p.add_argument("--targets", type=int, nargs="+", default=None, help="target classes (default: 0-9)")
    p.add_argument("--steps", type=positive_int, default=300, help="objective evaluations per pair")
    p.add_argument("--radii", type=non_negative_float, default=None,
                   help="ilo: relative l1 radius per intermediate layer (default: 0.3)")
    p.add_argument("--epsilon", type=positive_float, default=None,
                   help="pixel: l2 radius around the start (default: 0.3 sqrt(pixels), 8.4 on MNIST)")
    p.add_argument("--reference-weight", type=non_negative_float, default=0.0,
                   help="weight of ||x - start||^2/n (morphing: stay near the start)")
    p.add_argument("--frames", type=non_negative_int, default=0, help="snapshots along the way, written as morph.gif")
    p.add_argument("--seed", type=int, default=0, help="seed of the start latents and the projection")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="manifold-defense-generate", help="output folder")
    add_device(p)
    p.set_defaults(run=run)


def _judge_name(args: argparse.Namespace, guide: str) -> str:
    from manifold_defense.validation import InputError

    if args.judge is not None:
        if args.judge == guide:
            raise InputError(f"--judge {args.judge} is the guiding classifier: its verdict would not be independent; "
                             "pass another classifier")
        return args.judge
    return next(j for j in JUDGES[args.dataset] if j != guide)


def run(args: argparse.Namespace) -> int:
    """Run the command (every check before any model is loaded)."""
    import torch

    from manifold_defense import data
    from manifold_defense.checkpoint import atomic_write_text
    from manifold_defense.guided import guided_generate, guided_metrics
    from manifold_defense.viz import save_animation, save_image_grid

    if args.method != "ilo":
        refuse_unused(args, set(), {"radii": "--radii"}, f"--method {args.method}")
    if args.method != "pixel":
        refuse_unused(args, set(), {"epsilon": "--epsilon"}, f"--method {args.method}")
    device = check_device(args.device)
    out = check_output_dir(args.out)
    guide_name = args.classifier or GUIDES[args.dataset]
    judge_name = _judge_name(args, guide_name)
    gen = load_role(args.generator or {"digits": "digits-vae", "mnist": "mnist-vae20"}[args.dataset], "generator", device)
    guide = load_role(guide_name, "classifier", device, flag="--classifier")
    judge = load_role(judge_name, "classifier", device, flag="--judge")
    test = data.load(args.dataset, "test", path=args.data_path, limit=args.n)
    x, labels = test.images.to(device), test.labels.to(device)
    targets = torch.tensor(args.targets if args.targets else range(10), device=device)
    k = len(targets)
    starts, tgt = x.repeat_interleave(k, 0), targets.repeat(len(x))  # pair (i, j): start i towards target j
    res = guided_generate(gen, guide, tgt, starts, method=args.method, steps=args.steps,
                          radii=0.3 if args.radii is None else args.radii, epsilon=args.epsilon,
                          reference_weight=args.reference_weight, frames=args.frames, seed=args.seed,
                          progress=not args.quiet)
    moved = (tgt != labels.repeat_interleave(k)).cpu()  # pairs whose target differs from the start's class
    metrics = guided_metrics(res, judge, gen)
    correct = torch.tensor(metrics["per_pair"]["judge_correct"])
    success = float(correct[moved].mean()) if moved.any() else None
    summary = {"method": args.method, "steps": args.steps, "n_starts": len(x), "targets": targets.tolist(),
               "guide": guide_name, "judge": judge_name, "judge_success_changed_class": success,
               **{key: v for key, v in metrics.items() if key != "per_pair"}, "per_pair": metrics["per_pair"]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    rows = [torch.cat([x[i:i + 1], res.images[i * k:(i + 1) * k]]) for i in range(len(x))]
    rate = float("nan") if success is None else success
    grid = save_image_grid(rows, out / "grid.png", col_labels=["start"] + [f"-> {int(t)}" for t in targets],
                           title=f"{args.method}, {args.steps} steps: judge success {rate:.0%} (pairs that change class)")
    print(f"{args.method}: {len(tgt)} pairs guided by {guide_name}; judge success {rate:.3f} ({judge_name}, on the "
          f"pairs that change class), L2 to start {metrics['l2_to_start']:.3f}, range residual "
          f"{metrics['range_residual']:.5f}")
    print(f"wrote {grid} and {out / 'metrics.json'}")
    if args.frames > 0:
        gif = save_animation(res.frames, out / "morph.gif", columns=k)
        print(f"wrote {gif} ({res.frames.shape[0]} frames)")
    return 0
