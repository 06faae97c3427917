"""Recovery with random ReLU generators by subgradient descent with negation (the seed paper's setting).

G(z) = ReLU(W_3 ReLU(W_2 ReLU(W_1 z))), W_i ~ N(0, 1/n_i), no biases, widths 10 → 250 → 150 → 500
(the 250 → 150 layer is contractive), A ~ N(0, 1/m).

(a) Noiseless: success (‖G(ẑ) − G(z*)‖ / ‖G(z*)‖ < 1e-3 within 5000 iterations) over 20 trials
    (5 networks × 4 latents, batched per network) for m/k ∈ {1, 2, 3, 4, 6, 8}; reported for one start
    and for 4 starts run together in the batch (best objective kept).
(b) Noisy: ‖η‖ = 0.1 fixed, m from 20 to 640 (4 starts); the error ‖G(ẑ) − G(z*)‖ against m on log-log
    axes and its fitted slope (theory: error ∝ √(k/m)·‖η‖, slope −0.5, for m ≳ k·poly(d)). ``noisy_slope``
    is fitted where the theorem applies, m/k ≥ 6 (noiseless recovery succeeds there); the slope over all
    m, including m below the recovery threshold where failed recoveries dominate, is reported beside it.

    python benchmarks/random_relu.py [--quick] [--out random_relu.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import provenance

from manifold_defense.generators import RandomReLUGenerator
from manifold_defense.inversion import subgradient
from manifold_defense.operators import GaussianMeasurements, GaussianNoise

RATIOS = [1, 2, 3, 4, 6, 8]
NOISY_M = [20, 40, 60, 80, 160, 320, 640]
FIT_FROM_RATIO = 6  # the bound holds once m ≳ k·poly(d): fit where noiseless recovery succeeds (m/k ≥ 6)


def trial_batch(widths, net_seed, latents, m, noise, steps, lr, restarts):
    G = RandomReLUGenerator(widths, seed=net_seed)
    z = torch.randn(latents, widths[0], generator=torch.Generator().manual_seed(10_000 + net_seed))
    with torch.no_grad():
        x = G(z)
    A = GaussianMeasurements(G.output_shape, m, seed=20_000 + net_seed)
    y = A(x)
    if noise > 0:
        y = GaussianNoise.per_measurement(noise, m, seed=30_000 + net_seed)(y)
    res = subgradient(G, y, A, steps=steps, lr=lr, restarts=restarts, seed=net_seed)
    err = (res.x - x).flatten(1).norm(dim=1)
    return err, err / x.flatten(1).norm(dim=1), res.evals_per_sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--widths", type=int, nargs="+", default=[10, 250, 150, 500])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--networks", type=int, default=5)
    p.add_argument("--latents", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "random_relu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.networks = 2000, 2
    k = args.widths[0]
    t0, c0 = time.perf_counter(), time.process_time()
    success: dict[str, float] = {}
    success_restarts: dict[str, float] = {}
    for ratio in RATIOS:
        m = ratio * k
        for restarts, table in ((1, success), (4, success_restarts)):
            rel = torch.cat([trial_batch(args.widths, s, args.latents, m, 0.0, args.steps, args.lr, restarts)[1]
                             for s in range(args.networks)])
            table[str(ratio)] = float((rel < 1e-3).float().mean())
        print(f"m/k={ratio}: success {success[str(ratio)]:.2f} (1 start), {success_restarts[str(ratio)]:.2f} "
              f"(4 starts), {len(rel)} trials", flush=True)
    noisy_err: dict[str, float] = {}
    noisy_se: dict[str, float] = {}
    for m in NOISY_M:
        err = torch.cat([trial_batch(args.widths, s, args.latents, m, args.noise, args.steps, args.lr, 4)[0]
                         for s in range(args.networks)])
        noisy_err[str(m)] = float(err.mean())
        noisy_se[str(m)] = float(err.std() / math.sqrt(len(err)))
        print(f"noisy m={m}: error {noisy_err[str(m)]:.4f} ± {noisy_se[str(m)]:.4f}", flush=True)
    fit_m = [m for m in NOISY_M if m >= FIT_FROM_RATIO * k]
    slope, intercept = (float(v) for v in np.polyfit(np.log(fit_m), np.log([noisy_err[str(m)] for m in fit_m]), 1))
    slope_all = float(np.polyfit(np.log(NOISY_M), np.log([noisy_err[str(m)] for m in NOISY_M]), 1)[0])
    out = {
        "setting": {"widths": args.widths, "steps": args.steps, "lr": args.lr, "trials": args.networks * args.latents,
                    "noise_norm": args.noise, "success_threshold": 1e-3},
        "success_rate": success,
        "success_rate_4_starts": success_restarts,
        "noisy_error": noisy_err,
        "noisy_stderr": noisy_se,
        "noisy_slope": slope,
        "noisy_slope_fit_m": fit_m,
        "noisy_slope_all_m": slope_all,
        "targets": {"success >= 0.95 at m/k = 6 (1 start)": bool(success["6"] >= 0.95),
                    "success >= 0.95 at m/k = 6 (4 starts)": bool(success_restarts["6"] >= 0.95),
                    "noisy slope in -0.5 ± 0.15": bool(abs(slope + 0.5) <= 0.15)},
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    out["provenance"] = provenance(args)
    Path(args.out).write_text(json.dumps(out, indent=2))
    _plot(out, Path(args.out).with_suffix(".png"), intercept, fit_m)
    print(json.dumps({k: out[k] for k in ("success_rate", "success_rate_4_starts", "noisy_slope", "noisy_slope_all_m",
                                          "targets")},
                     indent=1))
    return 0


def _plot(out: dict, path: Path, intercept: float, fit_m: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    r = [int(v) for v in out["success_rate"]]
    a.plot(r, list(out["success_rate"].values()), "o-", label="1 start")
    a.plot(r, list(out["success_rate_4_starts"].values()), "s--", label="4 starts")
    a.set_xlabel("m / k")
    a.set_ylabel("success rate")
    a.legend()
    a.grid(alpha=0.3)
    ms = [int(m) for m in out["noisy_error"]]
    errs = list(out["noisy_error"].values())
    b.errorbar(ms, errs, yerr=[1.96 * s for s in out["noisy_stderr"].values()], fmt="o", capsize=2)
    b.plot(fit_m, np.exp(intercept) * np.array(fit_m, float) ** out["noisy_slope"], "-",
           label=f"fit (m/k ≥ {FIT_FROM_RATIO}) slope {out['noisy_slope']:.2f}")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("m")
    b.set_ylabel("‖G(ẑ) − G(z*)‖")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
