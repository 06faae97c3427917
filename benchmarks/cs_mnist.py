"""Compressed sensing on MNIST: CSGM's protocol (Bora et al. 2017) with the mnist-vae20 generator.

First N test images, A_ij ~ N(0, 1/m), noise η ~ N(0, σ²/m) per measurement (σ = 0.1, so ‖η‖ ≈ 0.1),
m ∈ {10, 25, 50, 100, 200, 300, 400, 500, 750}. Every method sees the same A and the same noisy y.

Methods: lasso (pixel basis, α = 0.1), csgm (λ = 0, 10 restarts, 1000 Adam steps, lr 0.01), csgm_reg
(λ = 0.1), ilo (csgm_reg, then every layer of the decoder and its output within ℓ1 balls whose radii
are cross-validated per image on held-out measurements); the sparsity baselines lasso_dct and
lasso_wavelet (db4), whose α is chosen per m from a grid on validation images (MNIST *training*
images, same A, their own noise); and the untrained-network methods (no generator, no training data
except dip_lr's prior): dip (Deep Image Prior, Ulyanov et al. 2018 / Van Veen et al. 2018: a fresh
DeepImagePrior network per image, Adam, stopped at the noise energy ‖η‖² = σ², the discrepancy
principle) and dip_lr (dip plus Van Veen et al.'s learned regularisation, the weight prior fitted on
``--dip-prior-images`` training images; its weight chosen on the validation images). DIP methods run
at m ≤ ``--dip-max-m`` (default 200) only.

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
from common import provenance, pyplot, save_figure

from manifold_defense import data, zoo
from manifold_defense.generators import DeepImagePrior
from manifold_defense.inversion import fit_dip_prior
from manifold_defense.operators import GaussianMeasurements, GaussianNoise
from manifold_defense.recipes import LOSS_SCALE, RECIPES, recover

M_VALUES = [10, 25, 50, 75, 100, 200, 300, 400, 500, 750]
ALPHA_GRID = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # × 1/m
PRIOR_WEIGHT_GRID = [1e-2, 1e-1, 1.0, 10.0]  # the penalty sums ~ Σℓ Cℓ ≈ 200 terms at initialisation; the data term ~ σ²


class Validation:
    """Hyperparameters chosen on MNIST training images (never the test images), per m, and cached."""

    def __init__(self, args) -> None:
        self.args = args
        self.x = data.load("mnist", "train", limit=args.n_val).images.to(args.device)
        self.alpha: dict[tuple[str, int], float] = {}
        self.prior_weight: dict[int, float] = {}
        self.prior = None

    def measure(self, A) -> torch.Tensor:
        return GaussianNoise.per_measurement(self.args.noise, A.m, seed=3000 + A.m)(A(self.x))

    def lasso_alpha(self, method: str, A) -> float:
        """The validated α (CSGM's units: the recipe divides it by m) of ``lasso_dct`` / ``lasso_wavelet``."""
        key = (method, A.m)
        if key not in self.alpha:
            y = self.measure(A)
            errs = {a: float((recover(method, y, A, alpha=a).x - self.x).pow(2).mean()) for a in ALPHA_GRID}
            self.alpha[key] = min(errs, key=errs.get)
        return self.alpha[key]

    def dip_prior(self):
        if self.prior is None:
            imgs = data.load("mnist", "train", limit=self.args.n_val + self.args.dip_prior_images).images
            net = DeepImagePrior(imgs.shape[1:], channels=RECIPES["dip"].kwargs["channels"], seed=self.args.seed)
            self.prior = fit_dip_prior(net.to(self.args.device), imgs[self.args.n_val:].to(self.args.device),
                                       steps=self.args.dip_steps // 2, lr=RECIPES["dip"].kwargs["lr"], seed=self.args.seed)
        return self.prior

    def dip_prior_weight(self, A) -> float:
        if A.m not in self.prior_weight:
            y = self.measure(A)
            errs = {w: float((self.dip_lr(A, y, w).x - self.x).pow(2).mean()) for w in PRIOR_WEIGHT_GRID}
            self.prior_weight[A.m] = min(errs, key=errs.get)
        return self.prior_weight[A.m]

    def dip_lr(self, A, y, weight: float):
        return recover("dip_lr", y, A, noise=self.args.noise, weight_prior=self.dip_prior(), prior_weight=weight,
                       steps=self.args.dip_steps, seed=self.args.seed)


def run_method(method: str, gen, A, y, args, val: Validation) -> tuple[torch.Tensor, float]:
    """Reconstructions and generator (DIP: network) evaluations per image, from the library's recipes."""
    if method in ("lasso_dct", "lasso_wavelet"):
        rec = recover(method, y, A, alpha=val.lasso_alpha(method, A))
    elif method == "dip_lr":
        rec = val.dip_lr(A, y, val.dip_prior_weight(A))
    elif method == "dip":
        rec = recover("dip", y, A, noise=args.noise, steps=args.dip_steps, seed=args.seed)
    elif method == "lasso":
        rec = recover("lasso", y, A)
    else:
        extra = {"ilo_steps": args.ilo_steps} if method == "ilo" else {}
        rec = recover(method, y, A, generator=gen, steps=args.steps, restarts=args.restarts, seed=args.seed, **extra)
    return rec.x, rec.evals_per_image


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 images instead of 100")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    p.add_argument("--methods", nargs="+",
                   default=["lasso", "lasso_dct", "lasso_wavelet", "csgm", "csgm_reg", "ilo", "dip", "dip_lr"])
    p.add_argument("--steps", type=int, default=RECIPES["csgm"].kwargs["steps"])
    p.add_argument("--restarts", type=int, default=RECIPES["csgm"].kwargs["restarts"])
    p.add_argument("--ilo-steps", type=int, default=RECIPES["ilo"].kwargs["ilo_steps"])
    p.add_argument("--n-val", type=int, default=20, help="validation (training) images for hyperparameters")
    p.add_argument("--dip-steps", type=int, default=RECIPES["dip"].kwargs["steps"])
    p.add_argument("--dip-max-m", type=int, default=200)
    p.add_argument("--dip-prior-images", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.1, help="σ: total noise norm ‖η‖ ≈ σ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", default="mnist-vae20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cs_mnist.json"))
    args = p.parse_args(argv)
    n = args.n or (20 if args.quick else 100)

    x = data.load("mnist", "test", limit=n).images.to(args.device)
    gen = zoo.get(args.generator, args.device)
    mse: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    se: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    seconds: dict[str, float] = {k: 0.0 for k in args.methods}
    evals: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    per_image: dict[str, dict[str, list[float]]] = {k: {} for k in args.methods}
    spi_m: dict[str, dict[str, float]] = {k: {} for k in args.methods}
    val = Validation(args)
    for m in args.m:
        A = GaussianMeasurements(x.shape[1:], m, seed=1000 + m).to(args.device)
        y = GaussianNoise.per_measurement(args.noise, m, seed=2000 + m)(A(x))
        for method in args.methods:
            if method.startswith("dip") and m > args.dip_max_m:
                continue
            if method == "dip_lr":  # validation runs are not part of the timed reconstruction
                val.dip_prior_weight(A)
            elif method.startswith("lasso_"):
                val.lasso_alpha(method, A)
            t0 = time.perf_counter()
            x_hat, ev = run_method(method, gen, A, y, args, val)
            dt = time.perf_counter() - t0
            spi_m[method][str(m)] = dt / n
            err = (x_hat - x).pow(2).flatten(1).mean(1).cpu()
            mse[method][str(m)] = float(err.mean())
            se[method][str(m)] = float(err.std() / math.sqrt(n)) if n > 1 else float("nan")
            seconds[method] += dt
            evals[method][str(m)] = ev
            per_image[method][str(m)] = err.tolist()
            print(f"m={m:4d} {method:10s} mse {err.mean():.5f} ± {1.96 * se[method][str(m)]:.5f}  "
                  f"{dt / n:.3f} s/img  {ev:.0f} G-evals/img", flush=True)
    spi = {k: v / (n * max(1, len(spi_m[k]))) for k, v in seconds.items()}
    targets = {}
    if {"csgm", "lasso"} <= set(args.methods):
        targets["csgm <= 0.5 x lasso at m in {25,50,100}"] = {
            m: mse["csgm"][m] <= 0.5 * mse["lasso"][m] for m in ("25", "50", "100") if m in mse["csgm"]}
    if {"ilo", "csgm"} <= set(args.methods):
        targets["ilo <= csgm at every m"] = {m: mse["ilo"][m] <= mse["csgm"][m] for m in mse["ilo"]}
    lassos = [k for k in ("lasso", "lasso_dct", "lasso_wavelet") if k in args.methods]
    if "dip" in args.methods and lassos:
        targets["dip < best of lasso / lasso_dct / lasso_wavelet at every m <= 100"] = {
            m: mse["dip"][m] < min(mse[k][m] for k in lassos) for m in mse["dip"] if int(m) <= 100}
    if {"ilo", "lasso"} <= set(args.methods):
        targets["ilo <= lasso at every m <= 500"] = {
            m: mse["ilo"][m] <= mse["lasso"][m] for m in mse["ilo"] if int(m) <= 500}
    out = {
        "protocol": {"n_images": n, "m": args.m, "noise_sigma": args.noise, "generator": args.generator,
                     "recipes": {k: RECIPES[k].kwargs for k in args.methods}, "loss_scale": LOSS_SCALE,
                     "overrides": {"steps": args.steps, "restarts": args.restarts, "ilo_steps": args.ilo_steps,
                                   "dip_steps": args.dip_steps},
                     "lasso_alpha": "0.1 / m (= CSGM's 0.1 under A ~ N(0, 1))",
                     "lasso_basis_alpha_times_m": {f"{b}@{m}": a for (b, m), a in val.alpha.items()},
                     "dip": {"stop_at": "noise energy sigma^2", "max_m": args.dip_max_m,
                             "prior_images": args.dip_prior_images},
                     "dip_lr_prior_weight": {str(m): w for m, w in val.prior_weight.items()},
                     "validation_images": f"MNIST train[:{args.n_val}]",
                     "device": args.device, "torch_threads": torch.get_num_threads()},
        "n_images": n,
        "per_pixel_mse": mse,
        "stderr": se,
        "seconds_per_image": spi,
        "seconds_per_image_by_m": spi_m,
        "generator_evals_per_image": evals,
        "targets": targets,
        "per_image_mse": per_image,
    }
    out["cpu_seconds"] = time.process_time()  # the whole run, loading included
    out["provenance"] = provenance(args)
    Path(args.out).write_text(json.dumps(out, indent=2))
    _plot(out, Path(args.out).with_suffix(".png"))
    print(json.dumps({k: out[k] for k in ("per_pixel_mse", "seconds_per_image", "targets")}, indent=1))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _plot(out: dict, path: Path) -> None:
    plt = pyplot()

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
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
