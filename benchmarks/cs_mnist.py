"""Compressed sensing on MNIST: CSGM's protocol (Bora et al. 2017) with the mnist-vae20 generator.

First N test images, A_ij ~ N(0, 1/m), noise η ~ N(0, σ²/m) per measurement (σ = 0.1, so ‖η‖ ≈ 0.1),
m ∈ {10, 25, 50, 100, 200, 300, 400, 500, 750}. Every method sees the same A and the same noisy y.

Methods: lasso (pixel basis, α = 0.1), csgm (λ = 0, 10 restarts, 1000 Adam steps, lr 0.01), csgm_reg
(λ = 0.1), ilo (csgm_reg, then every layer of the decoder and its output within ℓ1 balls whose radii
are cross-validated per image on held-out measurements).

    python benchmarks/cs_mnist.py [--quick] [--out cs_mnist.json] [--methods lasso csgm ...]

Scale: CSGM's constants were set for A ~ N(0, 1) with the mean squared residual. With A ~ N(0, 1/m),
the same problems are ‖y − A G(z)‖² + λ‖z‖² (``loss="sum"``) and Lasso with α = 0.1 / m; those are used,
so "α = 0.1" and "λ = 0.1" mean what they meant in the paper.

Writes JSON (per-pixel MSE and its standard error per method and m, seconds per image, generator
evaluations per image, targets met or not) and a PNG of error against m with ±1.96·SE bars.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from manifold_defense import data, zoo
from manifold_defense.baselines import lasso
from manifold_defense.inversion import csgm, ilo
from manifold_defense.operators import GaussianMeasurements, GaussianNoise

M_VALUES = [10, 25, 50, 100, 200, 300, 400, 500, 750]
CSGM = {"restarts": 10, "steps": 1000, "lr": 0.01}


def run_method(method: str, gen, A, y, args) -> tuple[torch.Tensor, float]:
    """Returns reconstructions and generator evaluations per image."""
    if method == "lasso":
        # CSGM used A ~ N(0, 1) with Lasso α = 0.1; with A ~ N(0, 1/m) the same problem has α = 0.1 / m.
        return lasso(A, y, alpha=0.1 / A.m, basis="pixel"), 0.0
    if method in ("lasso_dct", "lasso_wavelet"):
        return lasso(A, y, alpha=args.lasso_alpha_basis / A.m, basis=method.split("_")[1]), 0.0
    kw = dict(CSGM, steps=args.steps, restarts=args.restarts, loss="sum")
    if method == "csgm":
        res = csgm(gen, y, A, prior_weight=0.0, seed=args.seed, **kw)
    elif method == "csgm_reg":
        res = csgm(gen, y, A, prior_weight=0.1, seed=args.seed, **kw)
    elif method == "ilo":
        res = ilo(gen, y, A, csgm_kwargs=dict(kw, prior_weight=0.1), steps=args.ilo_steps, seed=args.seed)
    else:
        raise SystemExit(f"unknown method {method}")
    return res.x, res.evals_per_sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 images instead of 100")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    p.add_argument("--methods", nargs="+", default=["lasso", "csgm", "csgm_reg", "ilo"])
    p.add_argument("--steps", type=int, default=CSGM["steps"])
    p.add_argument("--restarts", type=int, default=CSGM["restarts"])
    p.add_argument("--ilo-steps", type=int, default=300)
    p.add_argument("--lasso-alpha-basis", type=float, default=0.01)
    p.add_argument("--noise", type=float, default=0.1, help="σ: total noise norm ‖η‖ ≈ σ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", default="mnist-vae20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="cs_mnist.json")
    args = p.parse_args(argv)
    n = args.n or (20 if args.quick else 100)

    x = data.load("mnist", "test", limit=n).images.to(args.device)
    gen = zoo.get(args.generator, args.device)
    mse: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    se: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    seconds: dict[str, float] = {k: 0.0 for k in args.methods}
    evals: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    per_image: dict[str, dict[str, list[float]]] = {k: {} for k in args.methods}
    for m in args.m:
        A = GaussianMeasurements(x.shape[1:], m, seed=1000 + m).to(args.device)
        y = GaussianNoise.per_measurement(args.noise, m, seed=2000 + m)(A(x))
        for method in args.methods:
            t0 = time.perf_counter()
            x_hat, ev = run_method(method, gen, A, y, args)
            dt = time.perf_counter() - t0
            err = (x_hat - x).pow(2).flatten(1).mean(1).cpu()
            mse[method][str(m)] = float(err.mean())
            se[method][str(m)] = float(err.std() / math.sqrt(n)) if n > 1 else float("nan")
            seconds[method] += dt
            evals[method][str(m)] = ev
            per_image[method][str(m)] = err.tolist()
            print(f"m={m:4d} {method:10s} mse {err.mean():.5f} ± {1.96 * se[method][str(m)]:.5f}  "
                  f"{dt / n:.3f} s/img  {ev:.0f} G-evals/img", flush=True)
    spi = {k: v / (n * len(args.m)) for k, v in seconds.items()}
    targets = {}
    if {"csgm", "lasso"} <= set(args.methods):
        targets["csgm <= 0.5 x lasso at m in {25,50,100}"] = {
            m: mse["csgm"][m] <= 0.5 * mse["lasso"][m] for m in ("25", "50", "100") if m in mse["csgm"]}
    if {"ilo", "csgm"} <= set(args.methods):
        targets["ilo <= csgm at every m"] = {m: mse["ilo"][m] <= mse["csgm"][m] for m in mse["ilo"]}
    if {"ilo", "lasso"} <= set(args.methods):
        targets["ilo <= lasso at every m <= 500"] = {
            m: mse["ilo"][m] <= mse["lasso"][m] for m in mse["ilo"] if int(m) <= 500}
    out = {
        "protocol": {"n_images": n, "m": args.m, "noise_sigma": args.noise, "generator": args.generator,
                     "csgm": dict(CSGM, steps=args.steps, restarts=args.restarts), "ilo_steps": args.ilo_steps,
                     "lasso_alpha": "0.1 / m (= CSGM's 0.1 under A ~ N(0, 1))", "csgm_loss": "sum",
                     "device": args.device, "torch_threads": torch.get_num_threads()},
        "n_images": n,
        "per_pixel_mse": mse,
        "stderr": se,
        "seconds_per_image": spi,
        "generator_evals_per_image": evals,
        "targets": targets,
        "per_image_mse": per_image,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    _plot(out, Path(args.out).with_suffix(".png"))
    print(json.dumps({k: out[k] for k in ("per_pixel_mse", "seconds_per_image", "targets")}, indent=1))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, vals in out["per_pixel_mse"].items():
        ms = sorted(int(m) for m in vals)
        ax.errorbar(ms, [vals[str(m)] for m in ms], yerr=[1.96 * out["stderr"][method][str(m)] for m in ms],
                    marker="o", ms=3, capsize=2, label=method)
    ax.set_xlabel("measurements m")
    ax.set_ylabel("per-pixel MSE")
    ax.set_yscale("log")
    ax.set_title(f"MNIST compressed sensing, {out['n_images']} test images (±1.96 SE)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
