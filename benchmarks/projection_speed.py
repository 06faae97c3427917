"""Fast projection vs Defense-GAN's projection: error, accuracy, generator evaluations and speed, MNIST.

Same machine, same run, same generator weights, same first N MNIST test images (N = 200 for mnist-vae20,
50 for mnist-wgan, whose conv generator costs far more per evaluation), clean and FGSM-L∞-0.3 perturbed
(FGSM on the undefended classifier A). Two projections:

- ``defense_gan`` — Defense-GAN's published setting (Samangouei et al. 2018): L = 200 momentum-SGD steps ×
  R = 10 random restarts = 2,010 generator evaluations per image (with the final check);
- ``default`` — the library's default for that generator (``ProjectionConfig.for_generator``): the encoder's
  code as warm start (the VAE's own encoder; for the WGAN the Invert-and-Defend encoder of zoo entry
  ``mnist-wgan-inv``, trained for the unchanged mnist-wgan weights), a shared latent search (VAE), per-sample
  early stopping.

Per configuration: mean projection MSE ‖G(ẑ) − x‖²/n (± SE), defended accuracy of classifier A on G(ẑ)
(± SE), generator evaluations per image, images per second; per input kind and pooled. Ratios: evaluations
defense_gan / default, speed default / defense_gan. Paired differences (default − defense_gan) with their
standard errors. The floor: FLOPs of one generator forward + backward (counted by
``torch.utils.flop_counter``) × evaluations per image, against this machine's dense-matmul throughput.
``torch_compile``: the default projection with the generator under ``torch.compile`` vs eager (compile
time, images per second, largest output difference) — the default stays eager unless this pays.

    python benchmarks/projection_speed.py [--quick] [--out results/projection_speed.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import provenance
from torch.utils.flop_counter import FlopCounterMode

from manifold_defense import data, zoo
from manifold_defense.attacks import FGSM
from manifold_defense.defended import ProjectionConfig

#: (result key, generator for defense_gan, generator for the default (same weights + encoder), N)
GENERATORS = [("mnist-vae20", "mnist-vae20", "mnist-vae20", 200), ("mnist-wgan", "mnist-wgan", "mnist-wgan-inv", 50)]


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std(unbiased=True) / len(v) ** 0.5) if len(v) > 1 else 0.0


def flops_per_evaluation(generator: torch.nn.Module, batch: int = 64) -> float:
    """FLOPs of one generator forward + backward (w.r.t. the latent) per sample."""
    z = torch.randn(batch, generator.latent_dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        generator(z).sum().backward()
    return counter.get_total_flops() / batch


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """Dense float32 matrix-multiply throughput of this machine (the roofline the floor is measured against)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


def project_all(gen, cfg: ProjectionConfig, x: torch.Tensor, y: torch.Tensor, clf, batch: int,
                min_seconds: float = 5.0) -> dict:
    """Project ``x`` in batches; per-image MSE, correctness, evaluations, and the wall time (the median
    over repetitions until ``min_seconds`` have passed — the projection is deterministic)."""
    times: list[float] = []
    while sum(times) < min_seconds and len(times) < 10:  # a fast run is repeated: the median of its timings
        evals, xs = [], []
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            res = cfg.project(gen, x[i : i + batch])
            xs.append(res.x)
            evals.append(res.generator_evals.double())
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    x_hat = torch.cat(xs)
    with torch.inference_mode():
        mse = (x_hat - x).pow(2).flatten(1).mean(1)
        correct = (clf(x_hat).argmax(1) == y).double()
    return {"mse": mse, "correct": correct, "evals": torch.cat(evals), "seconds": seconds, "x_hat": x_hat}


def compile_check(gen, cfg: ProjectionConfig, x: torch.Tensor, y: torch.Tensor, clf, batch: int) -> dict:
    """The default projection with ``torch.compile(generator, dynamic=True)`` against eager, same inputs: the
    compilation cost (first call), images per second after it, and the largest difference in G(ẑ)."""
    try:
        compiled = torch.compile(gen, dynamic=True)
        t0 = time.perf_counter()
        cfg.project(compiled, x[:batch])
        warmup = time.perf_counter() - t0
    except Exception as err:  # no C++ toolchain, unsupported op, ...: report instead of failing the benchmark
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    eager, comp = (project_all(g, cfg, x, y, clf, batch) for g in (gen, compiled))
    rate = {k: len(x) / r["seconds"] for k, r in (("eager", eager), ("compiled", comp))}
    return {"n": len(x), "compile_seconds": warmup, "eager_images_per_second": rate["eager"],
            "compiled_images_per_second": rate["compiled"], "speedup": rate["compiled"] / rate["eager"],
            "max_abs_difference": float((eager["x_hat"] - comp["x_hat"]).abs().max())}


def summary(runs: list[dict]) -> dict:
    mse = torch.cat([r["mse"] for r in runs])
    correct = torch.cat([r["correct"] for r in runs])
    evals = torch.cat([r["evals"] for r in runs])
    seconds = sum(r["seconds"] for r in runs)
    m, m_se = _mean_se(mse)
    a, a_se = _mean_se(correct)
    return {"n": len(mse), "mse": m, "mse_se": m_se, "accuracy": a, "accuracy_se": a_se,
            "gevals_per_image": float(evals.mean()), "images_per_second": len(mse) / seconds, "seconds": seconds}


def paired(a: dict, b: dict, key: str) -> dict:
    d = (b[key] - a[key]).double()
    m, se = _mean_se(d)
    return {"mean": m, "se": se}


def run_generator(key: str, bare_name: str, enc_name: str, n: int, clf, test, args, peak: float) -> tuple[dict, list]:
    bare, gen = zoo.get(bare_name).eval(), zoo.get(enc_name).eval()
    for g in (bare, gen):
        for p in g.parameters():
            p.requires_grad_(False)
    x, y = test.images[:n], test.labels[:n]
    inputs = {"clean": x, "fgsm_linf_0.3": FGSM().run(clf, x, y, 0.3)}
    configs = {"defense_gan": (bare, ProjectionConfig.defense_gan(latent_dim=bare.latent_dim)),
               "default": (gen, ProjectionConfig.for_generator(gen))}
    out: dict = {"n": n, "configs": {}}
    raw: dict = {}
    for name, (g, cfg) in configs.items():
        cfg.project(g, x[:4])  # warm-up (allocator, thread pools), not timed
        raw[name] = {kind: project_all(g, cfg, inp, y, clf, args.batch or n) for kind, inp in inputs.items()}
        out["configs"][name] = cfg.as_dict()
        out[name] = {**summary(list(raw[name].values())),
                     **{kind: summary([r]) for kind, r in raw[name].items()}}
        print(key, name, json.dumps({k: round(v, 5) for k, v in out[name].items() if not isinstance(v, dict)}),
              flush=True)
    dg, df = out["defense_gan"], out["default"]
    out["geval_ratio"] = dg["gevals_per_image"] / df["gevals_per_image"]
    out["speed_ratio"] = df["images_per_second"] / dg["images_per_second"]
    out["paired_default_minus_defense_gan"] = {
        kind: {"mse": paired(raw["defense_gan"][kind], raw["default"][kind], "mse"),
               "accuracy": paired(raw["defense_gan"][kind], raw["default"][kind], "correct")} for kind in inputs}
    flops = flops_per_evaluation(gen)
    out["floor"] = {"gflop_per_evaluation": flops / 1e9, "machine_matmul_gflops": peak}
    for name in ("defense_gan", "default"):
        r = out[name]
        gflop_per_image = flops * r["gevals_per_image"] / 1e9
        out["floor"][name] = {
            "gflop_per_image": gflop_per_image,
            "achieved_gflops": gflop_per_image * r["images_per_second"],
            "floor_images_per_second": peak / gflop_per_image,
            "fraction_of_floor": gflop_per_image * r["images_per_second"] / peak,
        }
    if args.compile:
        out["torch_compile"] = compile_check(gen, configs["default"][1], x, y, clf, args.batch or n)
        print(key, "torch.compile", json.dumps(out["torch_compile"]), flush=True)
    targets = {}
    for kind in ("pooled", *inputs):
        a, b = (dg, df) if kind == "pooled" else (dg[kind], df[kind])
        targets[f"{kind}: default mse <= defense_gan"] = b["mse"] <= a["mse"]
        targets[f"{kind}: default accuracy within 0.5 points (or better)"] = b["accuracy"] >= a["accuracy"] - 0.005
    targets["geval_ratio >= 20"] = out["geval_ratio"] >= 20
    targets["speed_ratio >= 10"] = out["speed_ratio"] >= 10
    out["targets"] = targets
    grid = [inputs["clean"][:8], raw["defense_gan"]["clean"]["x_hat"][:8], raw["default"]["clean"]["x_hat"][:8],
            inputs["fgsm_linf_0.3"][:8], raw["defense_gan"]["fgsm_linf_0.3"]["x_hat"][:8],
            raw["default"]["fgsm_linf_0.3"]["x_hat"][:8]]
    return out, grid


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [k for k in result if k.startswith("mnist-")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (metric, label) in zip(axes, [("gevals_per_image", "generator evaluations / image"),
                                          ("images_per_second", "images / second"), ("mse", "projection MSE")]):
        for j, name in enumerate(("defense_gan", "default")):
            for i, kind in enumerate(("clean", "fgsm_linf_0.3")):
                vals = [result[k][name][kind][metric] for k in keys]
                errs = [1.96 * result[k][name][kind]["mse_se"] for k in keys] if metric == "mse" else None
                pos = [g * 5 + j * 2 + i for g in range(len(keys))]
                ax.bar(pos, vals, yerr=errs, color=["tab:gray", "tab:blue"][j], alpha=[1.0, 0.55][i],
                       label=f"{name}, {kind}" if ax is axes[0] else None)
        ax.set_xticks([g * 5 + 1.5 for g in range(len(keys))], keys)
        ax.set_title(label)
        if metric != "mse":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 / 10 images (a smoke run)")
    p.add_argument("--batch", type=int, default=0, help="images per projection call (default: all N at once)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the default projection with torch.compile(generator) (default: on)")
    p.add_argument("--generators", nargs="+", default=[g[0] for g in GENERATORS], choices=[g[0] for g in GENERATORS],
                   help="which rows (mnist-wgan is not shipped: the zoo trains it from its recipe first, hours here)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = [g for g in GENERATORS if g[0] in args.generators]
    out_json = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "projection_speed" + ("_quick" if args.quick else "") + ".json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    clf = zoo.get("mnist-classifier-a").eval()
    test = data.load("mnist", "test")
    peak = matmul_gflops()
    result: dict = {"threads": torch.get_num_threads(), "machine_matmul_gflops": peak}
    grids = {}
    for key, bare, enc, n in rows:
        result[key], grids[key] = run_generator(key, bare, enc, (n // 10 if args.quick else n), clf, test, args, peak)
    result["total_seconds"] = time.perf_counter() - t0
    result["provenance"] = provenance(args)
    out_json.write_text(json.dumps(result, indent=2))
    plot(result, out_json.with_suffix(".png"))
    from manifold_defense.viz import save_image_grid

    for key, grid in grids.items():
        save_image_grid(grid, out_json.with_name(out_json.stem + f"_{key}_examples.png"),
                        row_labels=["clean", "defense_gan", "default", "FGSM 0.3", "defense_gan", "default"],
                        title=f"{key}: inputs and their projections")
    print(json.dumps({k: {m: result[k][m] for m in ("geval_ratio", "speed_ratio", "targets")}
                      for k, *_ in rows}, indent=1))
    print(f"wrote {out_json} ({result['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
