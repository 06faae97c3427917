"""``manifold-defense recover``: compressed sensing and other inverse problems with the registry's recipes
(the settings ``benchmarks/cs_mnist.py`` uses, in the same loss scale)."""

from __future__ import annotations

import argparse
import json
import math

from manifold_defense.cli.common import (
    add_device,
    check_device,
    check_output_dir,
    non_negative_float,
    positive_float,
    positive_int,
    refuse_unused,
)

__all__ = ["add_parser", "run"]

OPERATORS = ["gaussian", "circulant", "inpainting", "superres", "blur", "fourier", "identity"]
#: recipe setting → (argparse dest, flag) that sets it
TUNABLE = {"restarts": ("restarts", "--restarts"), "steps": ("steps", "--steps"), "lr": ("lr", "--lr"),
           "prior_weight": ("prior_weight", "--prior-weight"), "tv_weight": ("tv_weight", "--tv-weight"),
           "channels": ("dip_channels", "--dip-channels"), "ilo_steps": ("ilo_steps", "--ilo-steps"),
           "alpha": ("alpha", "--alpha")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    from manifold_defense.recipes import LOSS_SCALE, RECIPES

    listing = "\n".join(f"  {k:14s} {r.description}" for k, r in RECIPES.items())
    p = sub.add_parser("recover", help="compressed sensing / inverse problems: recover images from measurements",
                       description=f"Recipes (unset flags take the recipe's setting):\n{listing}\n\nScale: {LOSS_SCALE}.")
    p.add_argument("--dataset", choices=["digits", "mnist", "cifar10"], default="digits", help="test images")
    p.add_argument("--data-path", default=None, help="dataset file or folder (default: $MANIFOLD_DEFENSE_DATA)")
    p.add_argument("--operator", default="gaussian", choices=OPERATORS, help="measurement operator")
    p.add_argument("--m", type=positive_int, default=None,
                   help="measurements (gaussian, circulant), observed pixels (inpainting) or sampled frequencies "
                        "(fourier); default: the operator's")
    p.add_argument("--factor", type=positive_int, default=None, help="super-resolution factor (default: 2)")
    p.add_argument("--method", default="csgm", choices=list(RECIPES), help="recovery recipe")
    p.add_argument("--generator", default=None, help="zoo name or checkpoint (default: the dataset's VAE)")
    p.add_argument("--n", type=positive_int, default=16, help="number of test images")
    p.add_argument("--noise", type=non_negative_float, default=0.0, help="total noise norm σ (per entry σ/√m)")
    p.add_argument("--restarts", type=positive_int, default=None, help="restarts (default: the recipe's)")
    p.add_argument("--steps", type=positive_int, default=None, help="descent steps (default: the recipe's)")
    p.add_argument("--ilo-steps", type=positive_int, default=None, help="ilo: steps per layer (default: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--prior-weight", type=non_negative_float, default=None,
                   help="λ of the latent prior (csgm, ilo) or of dip_lr's weight prior (default: the recipe's)")
    p.add_argument("--tv-weight", type=non_negative_float, default=None, help="dip: total-variation weight (default: 0)")
    p.add_argument("--dip-channels", type=positive_int, default=None, help="dip: channels of the network (default: 32)")
    p.add_argument("--dip-prior-images", type=positive_int, default=32,
                   help="dip_lr: training images its weight prior is fitted on")
    p.add_argument("--alpha", type=positive_float, default=None,
                   help="Lasso α in CSGM's units (÷ m for gaussian/circulant; default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the operator, the noise and the restarts")
    p.add_argument("--out", default="manifold-defense-recover", help="output folder (recovery.png, metrics.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the command (every check before any image is measured)."""
    import torch

    from manifold_defense import data
    from manifold_defense.checkpoint import atomic_write_text
    from manifold_defense.cli.common import load_role
    from manifold_defense.inversion import fit_dip_prior
    from manifold_defense.operators import GaussianNoise, make_operator
    from manifold_defense.recipes import RECIPES, recover
    from manifold_defense.viz import measurement_picture, save_image_grid

    recipe = RECIPES[args.method]
    refuse_unused(args, {TUNABLE[k][0] for k in recipe.tunable}, dict(TUNABLE.values()), f"--method {args.method}")
    if "generator" not in recipe.needs:
        refuse_unused(args, set(), {"generator": "--generator"}, f"--method {args.method} (it needs no generator)")
    if args.operator != "superres":
        refuse_unused(args, set(), {"factor": "--factor"}, f"--operator {args.operator}")
    if args.operator in ("superres", "blur", "identity"):
        refuse_unused(args, set(), {"m": "--m"}, f"--operator {args.operator}")
    device = check_device(args.device)
    out = check_output_dir(args.out)
    extra = {"factor": args.factor or 2} if args.operator == "superres" else {}
    op = make_operator(args.operator, data.image_shape(args.dataset), m=args.m, seed=args.seed, **extra).to(device)
    gen = None
    if "generator" in recipe.needs:
        default = {"digits": "digits-vae", "mnist": "mnist-vae20"}.get(args.dataset)
        gen = load_role(args.generator or default, "generator", device)
    x = data.load(args.dataset, "test", path=args.data_path, limit=args.n).images.to(device)
    prior = None
    if "weight_prior" in recipe.needs:
        from manifold_defense.generators import DeepImagePrior

        net = DeepImagePrior(x.shape[1:], channels=args.dip_channels or 32, seed=args.seed).to(device)
        train = data.load(args.dataset, "train", path=args.data_path, limit=args.dip_prior_images).images.to(device)
        prior = fit_dip_prior(net, train, seed=args.seed, progress=not args.quiet)
    y = op(x)
    if args.noise > 0:
        y = GaussianNoise.per_measurement(args.noise, op.m, seed=args.seed + 1)(y)
    overrides = {k: getattr(args, TUNABLE[k][0]) for k in recipe.tunable}
    rec = recover(args.method, y, op, generator=gen, noise=args.noise, weight_prior=prior, seed=args.seed,
                  progress=not args.quiet, **{k: v for k, v in overrides.items() if v is not None})
    err = (rec.x - x).pow(2).flatten(1).mean(1).cpu()
    n = len(err)
    metrics = {"dataset": args.dataset, "operator": args.operator, "m": op.m, "method": args.method, "n_images": n,
               "noise_sigma": args.noise, "settings": rec.settings, "per_pixel_mse": float(err.mean()),
               "stderr": float(err.std() / math.sqrt(n)) if n > 1 else None, "per_image_mse": err.tolist(),
               "seconds_per_image": rec.seconds / n, "generator_evals_per_image": rec.evals_per_image}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    with torch.no_grad():
        picture = measurement_picture(op, y)
    grid = save_image_grid([x[:16], picture[:16], rec.x[:16]], out / "recovery.png",
                           row_labels=["truth", "measured", args.method],
                           title=f"{args.operator}, m = {op.m}, {args.method}: per-pixel MSE {err.mean():.4f}")
    print(f"{args.method} on {args.operator} (m = {op.m}), {n} {args.dataset} images: per-pixel MSE "
          f"{err.mean():.5f} ± {1.96 * (metrics['stderr'] or 0):.5f}, {rec.seconds / n:.3f} s/image")
    print(f"wrote {grid} and {out / 'metrics.json'}")
    return 0
