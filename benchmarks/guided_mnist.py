"""Classifier-guided generation on MNIST: ILO vs latent-only vs pixel-space guidance.

Daras et al. 2021 §4 steer a generator with a robust classifier through its intermediate layers (ILO);
Santurkar et al. 2019 do it in pixel space with the robust classifier alone. Protocol:

- 100 (start, target) pairs: the first 100 MNIST test images, target ``(label + 1 + i mod 9) mod 10`` (never
  the start's class; every offset equally often);
- generator ``mnist-vae20``; guiding classifier ``mnist-robust-l2`` (classifier A, Madry PGD-AT, L2 ε = 2);
  judge ``mnist-classifier-b`` (another architecture, standard training, never used for guidance);
- methods, same budget of ``--steps`` objective evaluations per pair: ``ilo`` (z, then each intermediate
  layer within an ℓ1 ball of relative radius ``--radii``), ``latent`` (z only: the range-limited baseline),
  ``pixel`` (ℓ2 ball of radius ``--epsilon`` around the start, default 0.3·√784 = 8.4: the radius at which
  its judge success is about ILO's; ``pixel_epsilon_sweep`` reports smaller radii);
- metrics (mean ± SE over pairs): ``judge_success`` (judge's argmax = target), ``l2_to_start`` ‖x − start‖₂,
  ``range_residual`` (per-pixel MSE of the result's projection onto mnist-vae20: how far it left the range),
  target probability under the guide, seconds per pair. Figures: examples per method, and the guide's
  target probability along the optimisation.

    python benchmarks/guided_mnist.py [--quick] [--out results/guided_mnist.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import provenance

from manifold_defense import data, zoo
from manifold_defense.guided import METHODS, guided_generate, guided_metrics
from manifold_defense.viz import save_image_grid


def _plot_traces(traces: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, tr in traces.items():
        m = tr.double().mean(1)
        se = tr.double().std(1) / tr.shape[1] ** 0.5
        steps = torch.arange(len(m))
        ax.plot(steps, m, label=name)
        ax.fill_between(steps, m - 1.96 * se, m + 1.96 * se, alpha=0.2)
    ax.set_xlabel("objective evaluations")
    ax.set_ylabel("p(target) under the guide")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 pairs, 100 steps (a smoke run)")
    p.add_argument("--n", type=int, default=100, help="(start, target) pairs")
    p.add_argument("--steps", type=int, default=300, help="objective evaluations per pair, every method")
    p.add_argument("--radii", type=float, default=0.3, help="ilo: relative l1 radius per intermediate layer")
    p.add_argument("--epsilon", type=float, default=None,
                   help="pixel: l2 radius around the start (default 0.3 sqrt(784) = 8.4)")
    p.add_argument("--epsilon-sweep", type=float, nargs="*", default=[4.0, 6.0],
                   help="extra pixel radii, reported under pixel_epsilon_sweep")
    p.add_argument("--generator", default="mnist-vae20")
    p.add_argument("--guide", default="mnist-robust-l2")
    p.add_argument("--judge", default="mnist-classifier-b")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps = 20, 100
    out_json = Path(args.out or Path(__file__).parent / "results" / ("guided_mnist_quick.json" if args.quick
                                                                      else "guided_mnist.json"))
    torch.manual_seed(0)
    t_start = time.perf_counter()
    gen = zoo.get(args.generator)
    guide = zoo.get(args.guide)
    judge = zoo.get(args.judge)
    test = data.load("mnist", "test", limit=args.n)
    x, labels = test.images, test.labels
    target = (labels + 1 + torch.arange(len(x)) % 9) % 10
    with torch.no_grad():
        guide_acc = float((guide(x).argmax(1) == labels).double().mean())
        judge_acc = float((judge(x).argmax(1) == labels).double().mean())
        judge_on_start = float((judge(x).argmax(1) == target).double().mean())

    result: dict = {"n_pairs": len(x), "judge_success": {}, "l2_to_start": {}, "range_residual": {},
                    "target_probability": {}, "stderr": {}, "seconds_per_pair": {}, "generator_evals_per_pair": {}}
    traces, images = {}, {}
    for method in METHODS:
        t0 = time.perf_counter()
        res = guided_generate(gen, guide, target, x, method=method, steps=args.steps, radii=args.radii,
                              epsilon=args.epsilon, progress=True)
        seconds = time.perf_counter() - t0
        m = guided_metrics(res, judge, gen)
        for key in ("judge_success", "l2_to_start", "range_residual", "target_probability"):
            result[key][method] = m[key]
            result["stderr"].setdefault(key, {})[method] = m[f"{key}_se"]
        result["seconds_per_pair"][method] = seconds / len(x)
        result["generator_evals_per_pair"][method] = float(res.generator_evals.mean())
        result.setdefault("per_pair", {})[method] = m["per_pair"]
        traces[method], images[method] = res.trace, res.images
        if method == "pixel":
            pixel_epsilon = res.info["epsilon"]  # the radius used (guided_generate's default when not given)
        print(f"{method:7s} judge success {m['judge_success']:.3f} ± {m['judge_success_se']:.3f}  "
              f"L2 to start {m['l2_to_start']:.3f}  range residual {m['range_residual']:.5f} ± "
              f"{m['range_residual_se']:.5f}  p(target) {m['target_probability']:.3f}  {seconds / len(x):.3f} s/pair",
              flush=True)
    sweep = {}
    for eps in args.epsilon_sweep:
        res = guided_generate(gen, guide, target, x, method="pixel", steps=args.steps, epsilon=eps)
        m = guided_metrics(res, judge, gen)
        sweep[str(eps)] = {k: m[k] for k in ("judge_success", "judge_success_se", "range_residual",
                                              "range_residual_se", "l2_to_start")}
        print(f"pixel eps {eps}: judge success {m['judge_success']:.3f}, range residual {m['range_residual']:.5f}",
              flush=True)
    result["pixel_epsilon_sweep"] = sweep
    js, rr = result["judge_success"], result["range_residual"]
    result["targets"] = {
        "ilo judge_success >= 0.90": js["ilo"] >= 0.90,
        "ilo range_residual <= 0.5 x pixel's": rr["ilo"] <= 0.5 * rr["pixel"],
    }
    result["reference"] = {"guide_clean_accuracy": guide_acc, "judge_clean_accuracy": judge_acc,
                           "judge_says_target_on_start_images": judge_on_start}
    result["protocol"] = {"generator": args.generator, "guide": args.guide, "judge": args.judge,
                          "steps": args.steps, "ilo_relative_radii": args.radii, "pixel_epsilon_l2": pixel_epsilon,
                          "pairs": "MNIST test[:n], target = (label + 1 + i mod 9) mod 10",
                          "torch_threads": torch.get_num_threads()}
    result["total_seconds"] = time.perf_counter() - t_start
    out_json.parent.mkdir(parents=True, exist_ok=True)
    result["provenance"] = provenance(args)
    out_json.write_text(json.dumps(result, indent=2))
    k = min(12, len(x))
    save_image_grid([x[:k]] + [images[m][:k] for m in METHODS], out_json.with_name(out_json.stem + "_examples.png"),
                    row_labels=["start"] + list(METHODS), col_labels=[f"{int(a)}->{int(b)}" for a, b in
                                                                     zip(labels[:k], target[:k])],
                    title="guided generation (robust classifier A); columns: start label -> target")
    _plot_traces(traces, out_json.with_name(out_json.stem + "_trace.png"))
    print(json.dumps({k2: result[k2] for k2 in ("judge_success", "l2_to_start", "range_residual", "targets")},
                     indent=2))
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
