"""``manifold-defense demo``: the whole story on the embedded digits (or on MNIST)."""

from __future__ import annotations

import argparse
import os

from manifold_defense.cli.common import add_device, check_device, check_output_dir, positive_int

__all__ = ["add_parser", "run", "default_workers"]


def default_workers() -> int:
    """The demo's worker processes: one per CPU core this process may use, at most 4 (the digits demo's
    100 images are 4 batches); each gets its share of torch's threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = sub.add_parser("demo", help="load (or train) the zoo models, attack them undefended and defended",
                       description="Loads (or trains) a VAE and a classifier on scikit-learn's 8x8 digits (or MNIST), "
                                   "reports their quality, attacks the undefended and the defended classifier "
                                   "(transfer, BPDA, implicit gradients, latent reparameterisation, on-manifold), runs "
                                   "the sanity checks and writes reports, plots and image grids.")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                   help="digits (embedded, default) or mnist (mnist.npz from --data-path or $MANIFOLD_DEFENSE_DATA)")
    p.add_argument("--data-path", default=None, help="folder holding mnist.npz, or the file (default: "
                                                     "$MANIFOLD_DEFENSE_DATA)")
    p.add_argument("--out", default="manifold-defense-demo", help="output folder for PNGs and JSON")
    p.add_argument("--n", type=positive_int, default=None,
                   help="test images attacked (default: 100 on digits, 20 on mnist: a few minutes on two CPU cores)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes sharing the attack batches (default: on the CPU one per core this "
                        f"process may use, at most 4 — {default_workers()} here; 1 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    from manifold_defense.demo import run_demo

    device = check_device(args.device)
    out = check_output_dir(args.out)
    if args.data_path is not None and args.dataset != "mnist":
        from manifold_defense.validation import InputError

        raise InputError("--data-path is for --dataset mnist (the digits are embedded)")
    n = args.n or (20 if args.dataset == "mnist" else 100)
    run_demo(out, dataset=args.dataset, n=n, device=device, progress=not args.quiet, data_path=args.data_path,
             workers=args.workers or (1 if device.type == "cuda" else default_workers()))
    return 0
