"""How long an honest evaluation takes: the per-attack table (suite ``columns``, every attack on every sample) against
the ``standard`` survivor cascade, on the same images, each ending in the same escalation to convergence.

Rows (classifier A of Defense-GAN, MNIST test images from the first):

- ``default_vae20`` — behind the default projection on ``mnist-vae20`` (500 images);
- ``defense_gan_sngan`` — behind Defense-GAN's published projection (L = 200, R = 10) on ``mnist-sngan-inv``
  (100 images), adaptive attacks crafted on the default projection of the same generator (success always
  scored on the real one), as ``benchmarks/defense_mnist.py`` does.

Threat models ℓ∞ 0.3 and ℓ2 3.8. Per row and suite: wall and CPU seconds of this invocation (evaluation, sanity
checks and report), the seconds the records hold (the same work when a run was resumed), projections per image
(rows projected with the attacked model's own projection, and with any), the worst case per threat model with
its 95 % Wilson interval, what each attack added (samples attacked, new breaks, seconds), the escalation and the
sanity checks, and the provenance of the run that made it (taken as it starts). Records live in
``benchmarks/results/evaluation_speed/<row>/<suite>-v<version>/`` (the JSON's keys alike: earlier versions of a
suite stay beside the current one): a killed run resumes.

    python benchmarks/evaluation_speed.py [--rows default_vae20 defense_gan_sngan] [--suites standard columns]
        [--workers 2] [--n N] [--quick]

The columns suite of ``defense_gan_sngan`` costs about 40 CPU hours (``defense_mnist_sngan-inv.json``: 143,000 s
of attacks); ``--baseline-json`` reads that committed row's worst case and seconds for the comparison instead of
running it again (stated in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import REPO_ROOT, cpu_seconds, provenance, pyplot, save_figure

from manifold_defense import data, zoo
from manifold_defense.checkpoint import atomic_write_text
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import AttackBudget, evaluate, sanity_checks, write_report
from manifold_defense.eval.suites import SUITES

ROWS = {"default_vae20": ("mnist-vae20", "default", 500), "defense_gan_sngan": ("mnist-sngan-inv", "defense_gan", 100)}
#: per row: batch size (enough batches for two workers at every stage) and the sanity checks' sizes. Behind
#: Defense-GAN's projection every query is 2,000 generator passes (3.5 s per input, a batch padded to 16 rows):
#: the gradient check uses 4 inputs × 16 directions (128 projections, about 450 s) and HopSkipJump, ~500 label
#: queries of ~56 s each, does not run there (the per-attack run found it broke none of 8 inputs: 12,000 s)
SETTINGS = {"default_vae20": {"batch_size": 25, "checks": {"decision_subset": 16}},
            "defense_gan_sngan": {"batch_size": 20, "checks": {"decision_subset": 0, "gradient_subset": 4,
                                                                "directions": 16, "subset": 16}}}
EPSILONS = {"linf": [0.3], "l2": [3.8]}
RESULTS = REPO_ROOT / "benchmarks" / "results"


_cpu = cpu_seconds


def run_suite(row: str, suite: str, args, x, y, clf) -> dict:
    gen_name, preset, _ = ROWS[row]
    gen = zoo.get(gen_name)
    model = DefendedModel(clf, gen, ProjectionConfig.preset(preset, gen)).eval()
    surrogate = ProjectionConfig.for_generator(gen) if preset == "defense_gan" else None
    folder = args.folder / row / _versioned(suite)
    budget = AttackBudget.quick() if args.quick else AttackBudget()
    t0, c0 = time.perf_counter(), _cpu()
    batch_size, checks = args.batch_size or SETTINGS[row]["batch_size"], SETTINGS[row]["checks"]
    ev = evaluate(model, x, y, suite=suite, epsilons=EPSILONS, threats=list(EPSILONS), budget=budget, classifier=clf,
                  surrogate=surrogate, batch_size=batch_size, out_dir=folder, progress=not args.quiet,
                  dataset="mnist", workers=args.workers)
    t1, c1 = time.perf_counter(), _cpu()
    sanity_checks(ev, model, x, y, batch_size=batch_size, out_dir=folder / "sanity", **checks)
    t2, c2 = time.perf_counter(), _cpu()
    write_report(ev, folder, title=f"classifier A / {preset} projection on {gen_name}, suite {suite}")
    t3, c3 = time.perf_counter(), _cpu()
    d = ev.to_dict()
    n = len(ev.indices)
    model_proj = sum(s["model_projections"] for s in ev.stages) + ev.clean_cost.get("model_projections", 0)
    all_proj = sum(s["projections"] for s in ev.stages) + ev.clean_cost.get("projections", 0)
    return {"n": n, "suite": d["suite"], "clean": d["clean"], "worst_case": d["worst_case"],
            "stages": ev.stages, "converged": d["converged"], "sanity": d["sanity"],
            "sanity_details": d["sanity_details"],
            "broken_by_sanity_checks": d.get("broken_by_sanity_checks", {}),
            "seconds": {"wall_total": t3 - t0, "wall_evaluate": t1 - t0, "wall_sanity": t2 - t1,
                        "wall_report": t3 - t2, "cpu_total": c3 - c0, "cpu_evaluate": c1 - c0, "cpu_sanity": c2 - c1,
                        "records_attack_seconds": sum(s["seconds"] for s in ev.stages),
                        "records_clean_seconds": ev.clean_cost.get("seconds", 0.0)},
            "projections_per_image": {"attacked_model": model_proj / n, "any": all_proj / n},
            "workers": args.workers, "batch_size": batch_size, "checks": checks,
            "folder": str(folder.relative_to(REPO_ROOT)),
            "projection": ProjectionConfig.preset(preset, gen).as_dict(), "generator": gen_name}


def _versioned(suite: str) -> str:
    """The records folder and JSON key of a suite's current version (``standard-v3``): a new version of a suite is
    another run, beside the old one's records rather than refused by them."""
    return f"{suite}-v{SUITES[suite].version}"


def baseline(row: str, path: Path) -> dict | None:
    """The committed per-attack run of ``row`` (``defense_mnist_sngan-inv.json``'s defended_defense_gan), for the
    comparison where rerunning it costs tens of CPU hours."""
    if row != "defense_gan_sngan" or not path.is_file():
        return None
    d = json.loads(path.read_text())
    r = "defended_defense_gan"
    secs = d["seconds"][r]["per_attack_seconds"]
    keep = {k: v for k, v in secs.items() if not k.startswith(("on_manifold",))}
    return {"source": str(path.relative_to(REPO_ROOT)), "n": d["n"][r],
            "worst_case": {"linf@0.3": {"accuracy": d["accuracy"][r]["worst_linf_0.3"],
                                        "ci95": d["ci95"][r]["worst_linf_0.3"]},
                           "l2@3.8": {"accuracy": d["accuracy"][r]["worst_l2_3.8"],
                                      "ci95": d["ci95"][r]["worst_l2_3.8"]}},
            "records_attack_seconds_linf_l2": sum(keep.values()),
            "note": "today's per-attack columns on the same 100 images, same models (records committed with that "
                    "file); not rerun here: about 40 CPU hours"}


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = list(result["rows"])
    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for suite, r in result["rows"][row].items():
            if not isinstance(r, dict) or "stages" not in r:
                continue
            for threat in EPSILONS:
                stages = [s for s in r["stages"] if s["threat"] == threat]
                t, left = [0.0], [r["clean"]["accuracy"]]
                for s in stages:
                    t.append(t[-1] + s["seconds"])
                    left.append(s["left"] / r["n"])
                ax.step(t, left, where="post", marker="o", ms=3, label=f"{suite} {threat}")
        ax.set_xlabel("attack CPU seconds (records)")
        ax.set_ylabel("robust accuracy so far")
        ax.set_title(row)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--suites", nargs="+", default=["standard", "columns"], choices=["standard", "columns"])
    p.add_argument("--n", type=int, default=None, help="images per row (default: 500 and 100)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: the row's (SETTINGS)")
    p.add_argument("--quick", action="store_true", help="AttackBudget.quick() and 20 images (a smoke run)")
    p.add_argument("--baseline-json", default=str(RESULTS / "defense_mnist_sngan-inv.json"))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/evaluation_speed[_quick].json)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process (its workers share them)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"evaluation_speed{suffix}.json"
    args.folder = RESULTS / f"evaluation_speed{suffix}"
    started = provenance(args)  # the tree as the run starts (its own writes below must not count as "dirty")
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.setdefault("rows", {})
    test = data.load("mnist", "test")
    clf = zoo.get("mnist-classifier-a")
    for row in args.rows:
        n = 20 if args.quick else args.n or ROWS[row][2]
        x, y = test.images[:n], test.labels[:n]
        entry = result["rows"].setdefault(row, {})
        for suite in args.suites:
            if row == "defense_gan_sngan" and suite == "columns" and not args.quick:
                entry["columns_committed"] = baseline(row, Path(args.baseline_json))
                continue
            key = _versioned(suite)
            entry[key] = run_suite(row, suite, args, x, y, clf) | {"provenance": started}
            print(json.dumps({row: {key: {k: entry[key][k] for k in ("worst_case", "seconds",
                                                                      "projections_per_image")}}}, indent=1))
            result["provenance"] = started
            atomic_write_text(out, json.dumps(result, indent=2))
    for row, entry in result["rows"].items():
        std, cols = entry.get(_versioned("standard")), entry.get(_versioned("columns")) or entry.get("columns_committed")
        if std and cols and "seconds" in cols:
            entry["speedup_wall"] = cols["seconds"]["wall_total"] / std["seconds"]["wall_total"]
        if std and cols:
            entry["speedup_attack_seconds"] = (cols.get("records_attack_seconds_linf_l2")
                                               or cols["seconds"]["records_attack_seconds"]) / \
                max(std["seconds"]["records_attack_seconds"], 1e-9)
    result["provenance"] = started
    atomic_write_text(out, json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
