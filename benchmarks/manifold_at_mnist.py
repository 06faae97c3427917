"""On- and off-manifold adversarial training on MNIST, judged with label-preserving on-manifold attacks.

Classifier A (Samangouei et al. 2018) trained five ways on MNIST with the same epochs, schedule and seed:

- ``standard`` — cross-entropy;
- ``pgd_at`` — Madry et al. PGD adversarial training, ℓ2 ε = 1.5 (the robustness library's L2Step);
- ``manifold_at`` — the ``rmd`` preset (Ilyas et al. 2017): Madry ℓ2 ε = 1.5 plus the overpowered-attack
  consistency term (weight 1e-2) on mnist-vae20 pairs with ‖G(z1) − G(z2)‖₂ ≤ 1.5;
- ``stutz`` — on-manifold adversarial training (Stutz, Hein, Schiele 2019): latent PGD in the true class's
  generator (``mnist-class-vaes``, one VAE per digit), latent ℓ∞ budget η (the ``on_manifold_cc`` column's);
- ``combined`` — ``pgd_at``'s loss plus ``--combined-weight`` (default 0.5, the preset's) × ``stutz``'s.

Each is evaluated undefended on the first N MNIST test images and behind the default projection onto
mnist-vae20 (``defended_*``) on the first ``--defended-n`` of them (default 100: a defended row costs a projection
per attack step and image, ~25 s per image with every attack on one CPU thread; the intervals say what n buys;
``most_robust_row`` compares worst cases measured on different n). Columns: ``clean``; ``pgd_l2_2.5`` (100 steps;
BPDA + EOT 2 through the defended model's own projection on the defended rows); ``pgd_l2_2.5_implicit`` and ``latent_reparam_l2_2.5``
(defended rows: the implicit-gradient attack and Athalye et al.'s latent reparameterisation);
``on_manifold_l2_1.5`` (latent PGD on the unconditional VAE, ‖G(z') − G(ẑ)‖₂ ≤ 1.5); ``overpowered_l2_1.5``;
``on_manifold_cc`` (label-preserving latent PGD in the true class's VAE, ‖z' − ẑ‖∞ ≤ η, 40 iterations as
Stutz et al.); ``overpowered_cc_l2_1.5`` (the overpowered pair inside the true class's VAE); ``worst_case``
(robust only if every attack failed).

Two judges that were never attacked label every adversarial input — ``mnist-classifier-b`` (standard, another
architecture) and ``mnist-robust-l2`` (Madry-trained; adversarial examples transfer between standard models,
so the robust judge is the one that says whether the label held): ``judge_agreement`` per row and column,
over all adversarial inputs and over those that broke the row's model.

η of ``on_manifold_cc``: a sweep on ``standard`` (first ``--sweep-n`` images, η in ``--sweep``) measures
accuracy and the robust judge's agreement per η; the run uses the largest η at which the robust judge gives
≥ 90 % of the adversarial inputs their true label (``--cc-eta`` fixes it instead). The agreement on the
broken samples alone is reported beside it. ``stutz`` and ``combined`` train at that η.

    python benchmarks/manifold_at_mnist.py [--quick] [--epochs 3] [--n 500] [--defended-n 100] [--seed 0]

Another ``--seed`` trains every model anew (its own checkpoints) — e.g. ``--seed 1 --rows pgd_at combined
--cc-eta 0.5 --defended-n 0 --out results/manifold_at_mnist_seed1.json`` tells training noise from a real
difference between presets.

Models are trained into ``$MANIFOLD_DEFENSE_CACHE/benchmarks/`` (resumable: rerun after a kill); evaluations
append records per batch (resumable). JSON: {"n": {row: images}, "accuracy": {row: {column}}, "stderr",
"judge_agreement", "cc_budget_sweep", "epoch_seconds", "epoch_time_vs_pgd_at", "targets", ...}; PNG: a grid of on-manifold
adversarial examples per row (``manifold_at_mnist_grid.png``) and, per η of the sweep, against ``standard``
(``manifold_at_mnist_sweep_grid.png``: where the label stops holding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import provenance, pyplot, save_figure

from manifold_defense import data, zoo
from manifold_defense.checkpoint import atomic_write_text, load_checkpoint
from manifold_defense.classifiers import DefenseGANClassifier
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import AttackBudget, AttackSpec, build_attack, evaluate, write_report
from manifold_defense.training import objective_preset, train_classifier

MODELS = {"standard": "standard", "pgd_at": "pgd_at", "manifold_at": "rmd", "stutz": "stutz", "combined": "combined"}
CONDITIONAL = {"stutz", "combined"}  # trained with the class-conditional generator
COLUMNS = ["clean", "pgd_l2_2.5", "pgd_l2_2.5_implicit", "latent_reparam_l2_2.5", "on_manifold_l2_1.5",
           "overpowered_l2_1.5", "on_manifold_cc", "overpowered_cc_l2_1.5", "worst_case"]
JUDGES = {"standard_judge": "mnist-classifier-b", "robust_judge": "mnist-robust-l2"}


def _weight(name: str, args) -> float | None:
    """The on-manifold term's weight of ``combined`` (``--combined-weight``); None: the preset's own default."""
    return args.combined_weight if name == "combined" else None


def train(name: str, gen, cc_gen, train_split, test_split, args) -> tuple[torch.nn.Module, list[dict]]:
    cc = name in CONDITIONAL
    tag = (f"_cc{args.cc_eta:g}" if cc else "") + (f"_seed{args.seed}" if args.seed else "")  # seed 0: the older name
    tag += f"_w{args.combined_weight:g}" if name == "combined" and args.combined_weight != 1.0 else ""
    path = data.cache_dir() / "benchmarks" / f"manifold_at_{name}_e{args.epochs}_s{args.train_steps}{tag}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = DefenseGANClassifier("A")
    objective = objective_preset(MODELS[name], cc_gen if cc else gen, epsilon=1.5,
                                 eta=args.cc_eta if cc else 1.5, steps=args.train_steps, weight=_weight(name, args))
    hist = train_classifier(model, train_split.images, train_split.labels, epochs=args.epochs, seed=args.seed,
                            objective=objective, path=path, log_path=path.with_suffix(".jsonl"),
                            test=(test_split.images[:2000], test_split.labels[:2000]), progress=not args.quiet,
                            metadata={"dataset": "mnist", "kind": "classifier", "benchmark": "manifold_at"})
    if not hist:  # already trained: read the history from the checkpoint
        hist = load_checkpoint(path)["metadata"]["history"]
    return model.eval(), hist


def _budget(args) -> AttackBudget:
    return AttackBudget(pgd_steps=args.pgd_steps, eot=2, latent_steps=args.latent_steps, latent_restarts=2,
                        on_manifold_steps=40, on_manifold_stepsize=0.25, overpowered_steps=50, overpowered_rounds=2,
                        on_manifold_cc_steps=40)


def attacks(gen, cc_gen, defended: bool, args) -> list[AttackSpec]:
    # BPDA crafts through the attacked model's own projection (no cheaper surrogate); on undefended rows
    # it is plain PGD (EOT collapses to one draw on a deterministic model). The implicit-gradient attack and
    # latent reparameterisation attack the projection itself, so they run on the defended rows only.
    budget = _budget(args)
    columns = [("pgd_l2", 2.5, "pgd_l2_2.5", gen), ("pgd_l2_implicit", 2.5, "pgd_l2_2.5_implicit", gen),
               ("latent_reparam_l2", 2.5, "latent_reparam_l2_2.5", gen), ("on_manifold", 1.5, "on_manifold_l2_1.5", gen),
               ("overpowered", 1.5, "overpowered_l2_1.5", gen), ("on_manifold_cc", args.cc_eta, "on_manifold_cc", cc_gen),
               ("overpowered_cc", 1.5, "overpowered_cc_l2_1.5", cc_gen)]
    return [build_attack(name, [eps], generator=g, budget=budget, label=label) for name, eps, label, g in columns
            if defended or name not in ("latent_reparam_l2", "pgd_l2_implicit")]


def cc_budget_sweep(model, cc_gen, judges, x, y, args, work: Path) -> tuple[dict, float]:
    """On-manifold (class-conditional) accuracy and judge agreement of ``model`` per latent η; the largest η
    at which the robust judge gives >= 90 % of the adversarial inputs their true label (the label holds)."""
    spec = build_attack("on_manifold_cc", args.sweep, generator=cc_gen, budget=_budget(args))
    ev = evaluate(model, x, y, [spec], batch_size=100, out_dir=work / "cc_budget_sweep", progress=not args.quiet,
                  judges=judges)
    agree = ev.judge_agreement()
    out = {}
    for eta in args.sweep:
        key = f"on_manifold_cc@{eta:g}"
        a, se_, n = ev.accuracy(("on_manifold_cc", float(eta)))
        out[f"{eta:g}"] = {"accuracy": a, "stderr": se_, "n": n,
                           **{f"{j}_agreement_{part}": agree[key][j][part]["accuracy"] for j in judges
                              for part in ("all", "broken")},
                           "broken": agree[key]["robust_judge"]["broken"]["n"]}
    ok = [e for e in args.sweep if out[f"{e:g}"]["robust_judge_agreement_all"] >= 0.9]
    return out, float(max(ok)) if ok else float(min(args.sweep))


def on_manifold_convergence(model, gen, cc_gen, cc_eta, x, y) -> dict[str, float]:
    """Accuracy under each on-manifold column's attack (40 steps) vs 200 steps (and a larger step for the
    unconditional one): if these agree the columns measure the model, not the attack's budget."""
    out = {}
    base = AttackBudget(on_manifold_steps=40, on_manifold_stepsize=0.25, on_manifold_cc_steps=40)
    runs = [("steps40", "on_manifold", 1.5, gen, base),
            ("steps200", "on_manifold", 1.5, gen, replace(base, on_manifold_steps=200)),
            ("steps200_stepsize1", "on_manifold", 1.5, gen, replace(base, on_manifold_steps=200, on_manifold_stepsize=1.0)),
            ("cc_steps40", "on_manifold_cc", cc_eta, cc_gen, base),
            ("cc_steps200", "on_manifold_cc", cc_eta, cc_gen, replace(base, on_manifold_cc_steps=200))]
    for label, name, eps, g, budget in runs:
        out[label] = build_attack(name, [eps], generator=g, budget=budget).attack(model, x, y, epsilon=eps).robust_accuracy
    return out


def example_grid(rows: list[tuple[str, torch.nn.Module, float]], cc_gen, judges: dict, x, y, path: Path,
                 title: str) -> None:
    """One test image per digit: its projection onto its class's VAE (top row), then per (label, model, η) row
    the on-manifold (class-conditional) adversarial example against that model at latent budget η, titled with
    the model's and the robust judge's label (red: the model is fooled)."""
    pick = torch.stack([(y == c).nonzero()[0, 0] for c in range(10)])
    xs, ys = x[pick], y[pick]
    plt = pyplot()
    fig, axes = plt.subplots(len(rows) + 1, 10, figsize=(10, 1.15 * (len(rows) + 1)))
    ref = None
    for r, (label, model, eta) in enumerate(rows, start=1):
        found = build_attack("on_manifold_cc", [eta], generator=cc_gen).attack.run(model, xs, ys, eta)
        adv, ref = found.adversarial, found.reference
        with torch.inference_mode():
            pred, judge = model(adv).argmax(1), judges["robust_judge"](adv).argmax(1)
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(adv[c, 0].cpu(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{int(pred[c])}/{int(judge[c])}", fontsize=7, color="red" if pred[c] != ys[c] else "black")
        axes[r, 0].set_ylabel(label, fontsize=7)
    for c in range(10):
        axes[0, c].imshow(ref[c, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(f"G(ẑ, {c})", fontsize=7)
    axes[0, 0].set_ylabel("reference", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + ": model's label / robust judge's label (red: model fooled)", fontsize=8)
    save_figure(fig, path)


def _frozen(name: str):
    model = zoo.get(name).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


def timing_only(args) -> int:
    """One epoch of every preset, same configuration as the full run, fresh checkpoints, one after another."""
    import tempfile

    gen, cc_gen = _frozen("mnist-vae20"), _frozen("mnist-class-vaes")
    tr = data.load("mnist", "train")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset in MODELS.items():
            torch.manual_seed(args.seed)
            cc = name in CONDITIONAL
            objective = objective_preset(preset, cc_gen if cc else gen, epsilon=1.5, eta=args.cc_eta if cc else 1.5,
                                         steps=args.train_steps, weight=_weight(name, args))
            hist = train_classifier(DefenseGANClassifier("A"), tr.images, tr.labels, epochs=1, seed=args.seed,
                                    objective=objective, path=Path(tmp) / f"{name}.pt", progress=not args.quiet)
            seconds[name] = hist[0]["seconds"]
            print(name, f"{seconds[name]:.1f} s/epoch", flush=True)
    ratios = {k: v / seconds["pgd_at"] for k, v in seconds.items()}
    result = {"epoch_seconds": seconds, "epoch_time_vs_pgd_at": ratios,
              "targets": {"manifold_at epoch time <= 1.5 x pgd_at": ratios["manifold_at"] <= 1.5},
              "train_pgd_steps": args.train_steps, "cc_eta": args.cc_eta, "torch_threads": torch.get_num_threads()}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "manifold_at_mnist_timing.json"
    result["provenance"] = provenance(args)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def _column_eps(col: str, cc_eta: float) -> float:
    return cc_eta if col == "on_manifold_cc" else float(col.removesuffix("_implicit").rsplit("_", 1)[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--defended-n", type=int, default=100,
                   help="images of the defended rows (the first of the N; every image costs a projection per "
                        "attack step, ~25 s per image with every attack on one CPU thread; 0: undefended rows only)")
    p.add_argument("--quick", action="store_true", help="100 images, 1 epoch, 3 PGD steps in training")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=7, help="attack steps per training batch")
    p.add_argument("--pgd-steps", type=int, default=100, help="PGD steps of the evaluation attack")
    p.add_argument("--latent-steps", type=int, default=50, help="steps per round of latent reparameterisation")
    p.add_argument("--sweep", type=float, nargs="+", default=[0.3, 0.5, 0.75, 1.0, 1.5, 2.0],
                   help="latent L-inf budgets η of the class-conditional sweep on the standard model")
    p.add_argument("--sweep-n", type=int, default=200, help="images of the η sweep")
    p.add_argument("--cc-eta", type=float, default=None,
                   help="fix on_manifold_cc's η (and stutz/combined training's) instead of choosing it by the sweep")
    p.add_argument("--rows", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="models to train and evaluate (standard always, unless --cc-eta is given: the sweep needs it)")
    p.add_argument("--combined-weight", type=float, default=0.5,
                   help="weight of combined's on-manifold loss (the preset's default 0.5; 1.0, the earlier default, "
                        "made results/archive/manifold_at_mnist.json and _seed1.json; its own checkpoint name when "
                        "not 1)")
    p.add_argument("--baseline", default=None,
                   help="a JSON of this benchmark, same seed and configuration, whose pgd_at row the combined target "
                        "compares with when pgd_at is not among --rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--timing-only", action="store_true",
                   help="only time one training epoch of every preset (nothing else running), written to "
                        "results/manifold_at_mnist_timing.json (needs --cc-eta)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timing_only:
        if args.cc_eta is None:
            p.error("--timing-only needs --cc-eta")
        return timing_only(args)
    if args.quick:
        args.n, args.epochs, args.train_steps, args.pgd_steps, args.latent_steps = 100, 1, 3, 20, 30
        args.sweep_n = min(args.sweep_n, 100)
    out_json = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "manifold_at_mnist" + ("_quick" if args.quick else "") + ".json")
    work = out_json.with_suffix("")
    t0 = time.perf_counter()
    gen, cc_gen = _frozen("mnist-vae20"), _frozen("mnist-class-vaes")
    judges = {k: _frozen(v) for k, v in JUDGES.items()}
    tr, te = data.load("mnist", "train"), data.load("mnist", "test")
    x, y = te.images[: args.n], te.labels[: args.n]
    if args.defended_n < 0:
        p.error("--defended-n must be >= 0 (0: undefended rows only)")
    acc, se, agreement, histories, trained, n_rows = {}, {}, {}, {}, {}, {}
    sweep = convergence = None
    # the sweep runs on standard: it is trained first unless --cc-eta makes the sweep unnecessary
    rows = (["standard"] if args.cc_eta is None or "standard" in args.rows else []) + [r for r in args.rows
                                                                                        if r != "standard"]
    baseline = load_baseline(args, p) if args.baseline else None

    def evaluate_row(name: str, model: torch.nn.Module, defended: bool) -> None:
        row = f"defended_{name}" if defended else name
        m = DefendedModel(model, gen, ProjectionConfig.for_generator(gen)).eval() if defended else model
        # the defended rows on the first --defended-n of the same images (same run folder, same fingerprint)
        ev = evaluate(m, x, y, attacks(gen, cc_gen, defended, args), batch_size=100,
                      stop=min(args.defended_n, args.n) if defended else None,
                      out_dir=work / f"{row}_cc{args.cc_eta:g}", progress=not args.quiet, judges=judges)
        n_rows[row] = len(ev.indices)
        write_report(ev, work / f"{row}_cc{args.cc_eta:g}", title=f"MNIST classifier A, {row}")
        acc[row], se[row] = {}, {}
        acc[row]["clean"], se[row]["clean"], _ = ev.accuracy()
        for col in COLUMNS[1:-1]:
            if any(k[0] == col for k in ev.robust):
                acc[row][col], se[row][col], _ = ev.accuracy((col, _column_eps(col, args.cc_eta)))
        worst = [all(ev.robust[k][i] for k in ev.robust) for i in ev.indices]
        p_w = sum(worst) / len(worst)
        acc[row]["worst_case"], se[row]["worst_case"] = p_w, (p_w * (1 - p_w) / len(worst)) ** 0.5
        agreement[row] = ev.judge_agreement()
        print(row, json.dumps({k: round(v, 4) for k, v in acc[row].items()}), flush=True)
        # the JSON after every row: a long run never leaves an older run's (possibly higher) figures on show
        write_result(acc, se, agreement, histories, sweep, convergence, cc_gen, gen, args, out_json, t0, rows, n_rows,
                     baseline)

    # every model trained and evaluated undefended first (minutes each), then the defended rows (the
    # projection makes them the long part): a run stopped early has the cheap rows of every model
    for name in rows:
        print(f"\n== training {name}", flush=True)
        model, histories[name] = train(name, gen, cc_gen, tr, te, args)
        trained[name] = model
        if name == "standard" and args.cc_eta is None:
            sweep, args.cc_eta = cc_budget_sweep(model, cc_gen, judges, x[: args.sweep_n], y[: args.sweep_n], args, work)
            print("class-conditional budget sweep", json.dumps(sweep, indent=1), f"\n→ η = {args.cc_eta:g}", flush=True)
            example_grid([(f"η = {e:g}", model, e) for e in args.sweep], cc_gen, judges, x, y,
                         out_json.with_name(out_json.stem + "_sweep_grid.png"),
                         "on_manifold_cc against the standard model per latent L∞ budget η")
        evaluate_row(name, model, False)
        if name == "standard":
            convergence = on_manifold_convergence(model, gen, cc_gen, args.cc_eta, x[:100], y[:100])
            print("on-manifold convergence", json.dumps(convergence), flush=True)
    for name in rows if args.defended_n else []:
        evaluate_row(name, trained[name], True)
    example_grid([(name, model, args.cc_eta) for name, model in trained.items()], cc_gen, judges, x, y,
                 out_json.with_name(out_json.stem + "_grid.png"), f"on_manifold_cc, latent L∞ η = {args.cc_eta:g}")
    write_result(acc, se, agreement, histories, sweep, convergence, cc_gen, gen, args, out_json, t0, rows, n_rows,
                     baseline)
    return 0


def load_baseline(args, p: argparse.ArgumentParser) -> dict:
    """``--baseline``: another run's pgd_at row, refused unless it was trained and attacked as this run is."""
    other = json.loads(Path(args.baseline).read_text())
    cfg = other.get("config", {})
    mine = {"seed": args.seed, "epochs": args.epochs, "train_steps": args.train_steps, "eval_pgd_steps": args.pgd_steps,
            "cc_eta": args.cc_eta, "n": args.n}
    theirs = {**{k: cfg.get(k) for k in mine}, "cc_eta": other.get("cc_eta"), "n": (other.get("n") or {}).get("pgd_at")}
    if "pgd_at" not in other.get("accuracy", {}) or theirs != mine:
        p.error(f"--baseline {args.baseline}: needs a pgd_at row trained and attacked as this run ({mine}); "
                f"it has {theirs}")
    return {"file": Path(args.baseline).name, "pgd_at": other["accuracy"]["pgd_at"], "stderr": other["stderr"]["pgd_at"]}


def write_result(acc: dict, se: dict, agreement: dict, histories: dict, sweep, convergence, cc_gen, gen, args,
                 out_json: Path, t0: float, rows: list[str], n_rows: dict[str, int], baseline: dict | None) -> None:
    """The JSON of the rows evaluated so far (``missing_rows``: the run's rows still to come) and its targets."""
    missing = [r for name in rows for r in (name, f"defended_{name}")[: 2 if args.defended_n else 1] if r not in acc]
    epoch_seconds = {k: statistics.median(h["seconds"] for h in v) for k, v in histories.items()}
    targets = {}
    if "standard" in acc:
        cc_agree = agreement["standard"][f"on_manifold_cc@{args.cc_eta:g}"]["robust_judge"]
        targets |= {"standard on_manifold_cc <= 0.50": acc["standard"]["on_manifold_cc"] <= 0.5,
                    "robust judge agrees on >= 90% of standard's on_manifold_cc inputs":
                        cc_agree["all"]["accuracy"] >= 0.9}
    if "stutz" in acc:
        targets |= {"stutz on_manifold_cc >= standard + 0.30":
                        acc["stutz"]["on_manifold_cc"] >= acc["standard"]["on_manifold_cc"] + 0.30,
                    "stutz clean >= standard - 0.005": acc["stutz"]["clean"] >= acc["standard"]["clean"] - 0.005}
    pgd_at = acc.get("pgd_at") or (baseline or {}).get("pgd_at")  # this run's, else the baseline run's
    if "combined" in acc and pgd_at:
        targets["combined pgd_l2_2.5 >= pgd_at - 0.02"] = acc["combined"]["pgd_l2_2.5"] >= pgd_at["pgd_l2_2.5"] - 0.02
    if "manifold_at" in acc and "pgd_at" in acc:
        targets["manifold_at pgd_l2_2.5 >= pgd_at - 0.02"] = acc["manifold_at"]["pgd_l2_2.5"] >= acc["pgd_at"]["pgd_l2_2.5"] - 0.02
    most_robust = max(acc, key=lambda r: acc[r]["worst_case"])
    result = {"n": n_rows, "accuracy": acc, "stderr": se, "judge_agreement": agreement, "missing_rows": missing,
              "cc_eta": args.cc_eta, "baseline": baseline if "pgd_at" not in acc else None,
              "cc_budget_sweep": sweep, "most_robust_row": most_robust, "epoch_seconds": epoch_seconds,
              "epoch_time_vs_pgd_at": {k: v / epoch_seconds["pgd_at"] for k, v in epoch_seconds.items()}
              if "pgd_at" in epoch_seconds else None,
              "targets": targets, "on_manifold_convergence": convergence,
              "config": {"epochs": args.epochs, "train_steps": args.train_steps, "eval_pgd_steps": args.pgd_steps,
                         "latent_reparam_steps": args.latent_steps, "projection": ProjectionConfig.for_generator(gen).as_dict(),
                         "judges": JUDGES, "training_objectives": {
                             k: objective_preset(v, cc_gen if k in CONDITIONAL else gen, epsilon=1.5,
                                                 eta=args.cc_eta if k in CONDITIONAL else 1.5,
                                                 steps=args.train_steps, weight=_weight(k, args)).config()
                             for k, v in MODELS.items()},
                         "seed": args.seed, "combined_weight": args.combined_weight},
              "total_seconds": time.perf_counter() - t0}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    result["provenance"] = provenance(args)
    atomic_write_text(out_json, json.dumps(result, indent=2))
    if not missing:
        print(json.dumps({"accuracy": acc, "epoch_seconds": epoch_seconds, "targets": targets}, indent=1))
    print(f"wrote {out_json} ({result['total_seconds']:.0f} s; rows missing: {', '.join(missing) or 'none'})")


if __name__ == "__main__":
    sys.exit(main())
