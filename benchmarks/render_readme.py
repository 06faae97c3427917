"""Render the measured-results tables of the README and the docs from ``benchmarks/results/*.json``.

    python benchmarks/render_readme.py           # rewrite the result blocks of README.md and docs/results.md
    python benchmarks/render_readme.py --check   # exit 1 and print a unified diff when a page is out of date

``benchmarks/results/NAME.json`` fills the block between the lines ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` on the one page that holds it (``headline``, README's summary, is rendered from
several files); nothing outside the markers is touched. Accuracies carry 95 % Wilson intervals
(valid at small n); other quantities ± 1.96·SE where the JSON records a standard error (SE).
``tests/test_readme_results.py`` runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PAGES = [README, ROOT / "docs" / "results.md"]
BLOCK = re.compile(r"(?P<start><!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(?P<end><!-- /results:(?P=name) -->)",
                   re.DOTALL)
Z = 1.96  # half-width of a 95% interval in standard errors
DASH = "—"
CS_M = (25, 50, 100, 200, 500)


# ---------------------------------------------------------------------------------------------- formatting
def num(x, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits (integers in full); None → —."""
    if x is None:
        return DASH
    if isinstance(x, (bool, str)):
        return str(x)
    x = float(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    if abs(x) >= 10**digits:
        return f"{x:.0f}"
    return f"{x:#.{digits}g}".rstrip(".")  # '#': keep trailing zeros (17.00, not 17)


def setting(x) -> str:
    """A configuration value as written (0.1, not 0.1000)."""
    return DASH if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def pm(v, se, digits: int = 3) -> str:
    """``v ± 1.96·se`` (the half-width to 2 significant digits); just ``v`` without an SE."""
    if v is None:
        return DASH
    return num(v, digits) if se is None else f"{num(v, digits)} ± {num(Z * se, 2)}"


def frac(v, se=None, signed: bool = False) -> str:
    """A fraction (accuracy, success rate) to 3 decimals, ``± 1.96·se`` when given."""
    if v is None:
        return DASH
    s = f"{v:+.3f}" if signed else f"{v:.3f}"
    return s if se is None else f"{s} ± {Z * se:.3f}"


def wilson(v, n, z: float = Z) -> tuple[float, float] | None:
    """95 % Wilson interval of a proportion ``v`` over ``n`` samples (valid at small n; never outside [0, 1])."""
    if v is None or not n:
        return None
    centre = (v + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((v * (1 - v) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ci(v, interval=None) -> str:
    """A fraction with its 95 % interval in brackets: ``0.300 [0.22, 0.40]``."""
    if v is None:
        return DASH
    return f"{v:.3f}" if not interval else f"{v:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns (labels) left-aligned, the rest (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + ":---|" * left + "---:|" * (len(header) - left)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def source(name: str, data: dict) -> str:
    """The provenance line under a table (``not recorded`` for files written before provenance existed)."""
    prov = data.get("provenance") or {}
    commit = prov.get("git_commit")
    if not commit:
        sha = "not recorded"
    elif commit == "unknown":
        sha = "unknown"
    else:
        sha = commit[:7] + ("-dirty" if prov.get("git_dirty") else "")
    date = prov.get("date") or "date not recorded"
    command = f"`{prov['command']}`" if prov.get("command") else "not recorded"
    return f"Source: `benchmarks/results/{name}.json` (commit {sha}, {date}; command: {command})"


# ---------------------------------------------------------------------------------------------- one per file
def projection_speed(d: dict) -> str:
    gens = [k for k, v in d.items() if isinstance(v, dict) and {"defense_gan", "default"} <= set(v)]
    rows, summary, kinds = [], [], []
    for g in gens:
        kinds = [k for k, v in d[g]["defense_gan"].items() if isinstance(v, dict)]
        for kind in kinds:
            for proj in ("defense_gan", "default"):
                r = d[g][proj][kind]
                rows.append([f"`{g}`", kind, proj, num(r.get("n")), pm(r.get("mse"), r.get("mse_se")),
                             frac(r.get("accuracy"), r.get("accuracy_se")), num(r.get("gevals_per_image")),
                             num(r.get("images_per_second"))])
        diff = d[g].get("paired_default_minus_defense_gan", {})
        tc = d[g].get("torch_compile")
        compiled = (DASH if not tc else "error" if "speedup" not in tc else f"{num(tc['speedup'], 3)}× (n = {tc['n']})")
        summary.append([f"`{g}`", num(d[g].get("geval_ratio"), 3) + "×", num(d[g].get("speed_ratio"), 3) + "×"]
                       + [pm(diff.get(k, {}).get("mse", {}).get("mean"), diff.get(k, {}).get("mse", {}).get("se"))
                          for k in kinds]
                       + [frac(diff.get(k, {}).get("accuracy", {}).get("mean"),
                               diff.get(k, {}).get("accuracy", {}).get("se"), signed=True) for k in kinds]
                       + [compiled])
    return "\n\n".join([
        (f"Defense-GAN's projection settings (`defense_gan`) against the default ones (`default`) on the same images "
         f"and generator weights; projection MSE and defended accuracy ± 1.96·SE, {d.get('threads', '?')} threads."),
        table(["generator", "input", "projection", "n", "MSE", "accuracy", "G evals / image", "images / s"], rows,
              left=3),
        ("Ratios: defense_gan / default generator evaluations, default / defense_gan images per second. "
         "Δ: paired difference default − defense_gan ± 1.96·SE. torch.compile: compiled / eager images per second."),
        table(["generator", "G-eval ratio", "speed ratio"] + [f"Δ MSE {k}" for k in kinds]
              + [f"Δ accuracy {k}" for k in kinds] + ["torch.compile"], summary)])


def cs_mnist(d: dict) -> str:
    mse, se, proto = d["per_pixel_mse"], d.get("stderr", {}), d.get("protocol", {})
    present = sorted({int(m) for v in mse.values() for m in v})
    ms = [m for m in CS_M if m in present]
    rows = [[f"`{meth}`"] + [pm(v.get(str(m)), se.get(meth, {}).get(str(m))) if str(m) in v else DASH for m in ms]
            for meth, v in mse.items()]
    before = d.get("ilo_before_held_out_fix")
    if before:  # the figures ILO had while its CSGM stage was scored in-sample
        rows.append(["`ilo` before the held-out fix"] + [pm(before["per_pixel_mse"].get(str(m)),
                                                            before["stderr"].get(str(m))) for m in ms])
    others = [m for m in present if m not in ms]
    return "\n\n".join([
        f"Per-pixel MSE ± 1.96·SE over n = {d.get('n_images', '?')} MNIST test images from m Gaussian measurements, "
        f"noise σ = {setting(proto.get('noise_sigma'))}, generator `{proto.get('generator', '?')}` (— : not run at that m)"
        + (f"; the JSON also holds m = {', '.join(map(str, others))}." if others else "."),
        table(["method"] + [f"m = {m}" for m in ms], rows)])


def accuracy_table(acc: dict, n) -> str:
    """Models as columns, attacks as rows: accuracy [95 % Wilson interval] (n per model or one n)."""
    attacks = list(dict.fromkeys(a for v in acc.values() for a in v))
    size = lambda m: n[m] if isinstance(n, dict) else n  # noqa: E731
    header = ["attack"] + [f"{m} (n = {n[m]})" if isinstance(n, dict) else m for m in acc]
    return table(header, [[a] + [ci(acc[m][a], wilson(acc[m][a], size(m))) if a in acc[m] else DASH for m in acc]
                          for a in attacks])


def defense_mnist(d: dict) -> str:
    cfg, acc, n, cis = d.get("config", {}), d["accuracy"], d["n"], d.get("ci95", {})
    rows_ = list(acc)
    attacks = list(dict.fromkeys(a for v in acc.values() for a in v))

    def cell(row, a):
        if a not in acc[row]:
            return DASH
        interval = cis.get(row, {}).get(a) or wilson(acc[row][a], n[row] if isinstance(n, dict) else n)
        return ci(acc[row][a], interval)

    parts = [(f"Accuracy [95 % Wilson interval] of classifier `{cfg.get('classifier', '?')}`, undefended and behind "
              f"`{cfg.get('generator', '?')}` projections (n test images per column; `worst_*`: a sample counts "
              "only if every attack of that threat model failed)."),
             table(["attack"] + [f"{r} (n = {n[r]})" if isinstance(n, dict) else r for r in rows_],
                   [[a] + [cell(r, a) for r in rows_] for a in attacks])]
    for row, extra in d.get("extra_columns", {}).items():
        parts.append(f"Extra columns of `{row}` (counted in its worst case): " + "; ".join(
            f"`{col}` {ci(v['accuracy'], v.get('ci95'))}" for col, v in extra.items()) + ".")
    if d.get("missing_rows"):
        parts.append("Not in this run (shown once their evaluation is complete): "
                     + ", ".join(f"`{r}`" for r in d["missing_rows"]) + ".")
    for row, full in d.get("autoattack_full", {}).items():
        parts.append(f"AutoAttack 'rand' at its published budget ({full.get('budget', '?')}) on the first "
                     f"{full['n']} images of `{row}`: {ci(full['accuracy'], full.get('ci95'))}; the worst case "
                     f"ℓ∞ 0.3 on those images is {full['worst_linf_0.3_on_subset_with_it']:.3f} with it and "
                     f"{full['worst_linf_0.3_on_subset_without_it']:.3f} without it.")
    sanity = d.get("sanity", {})
    checks = list(dict.fromkeys(k for v in sanity.values() for k in v))
    if checks:
        verdict = {True: "pass", False: "**FAIL**", None: "could not run"}
        parts.append("Sanity checks (Carlini et al. 2019; details in the JSON's `sanity_details`):")
        parts.append(table(["check"] + rows_, [[k] + [verdict[sanity[r][k]] if k in sanity.get(r, {}) else DASH
                                                     for r in rows_] for k in checks]))
    return "\n\n".join(parts)


def manifold_at_mnist(d: dict) -> str:
    cfg = d.get("config", {})
    n = "n in each column's header" if isinstance(d["n"], dict) else f"n = {d['n']}"
    return "\n\n".join([
        (f"Accuracy [95 % Wilson interval] on the first n MNIST test images ({n}) of classifiers trained "
         f"{cfg.get('epochs', '?')} epoch(s) ({cfg.get('train_steps', cfg.get('train_pgd_steps', '?'))} training PGD steps), attacked with "
         f"{cfg.get('eval_pgd_steps', '?')} PGD steps; `defended_*`: the same classifier behind the projection "
         "(— : attack not run on that model)."),
        accuracy_table(d["accuracy"], d["n"])]
        + ([f"`combined`: on-manifold loss weight {cfg.get('combined_weight', 1.0):g}."] if "combined" in d["accuracy"]
           else [])
        + ([f"`pgd_at` of the combined target from `{b['file']}` (same seed and configuration): `pgd_l2_2.5` "
            f"{num(b['pgd_at']['pgd_l2_2.5'], 3)}; targets: "
            + "; ".join(f"{k}: {'met' if v else '**missed**'}" for k, v in d.get("targets", {}).items()) + "."]
           if (b := d.get("baseline")) else [])
        + ([f"Not in this run yet (shown once evaluated): {', '.join(f'`{r}`' for r in d['missing_rows'])}."]
           if d.get("missing_rows") else []))


def manifold_at_mnist_timing(d: dict) -> str:
    ratios = d.get("epoch_time_vs_pgd_at") or {}
    rows = [[m, num(s), num(ratios.get(m), 3) if m in ratios else DASH] for m, s in d["epoch_seconds"].items()]
    return "\n\n".join([
        (f"One training epoch each, one after another in one run, {d.get('train_pgd_steps', '?')} training PGD "
         f"steps, {d.get('torch_threads', '?')} threads, nothing else running; no SE (one epoch per model)."),
        table(["model", "seconds / epoch", "vs pgd_at"], rows)])


def guided_mnist(d: dict) -> str:
    se, proto = d.get("stderr", {}), d.get("protocol", {})
    gevals, spp = d.get("generator_evals_per_pair", {}), d.get("seconds_per_pair", {})

    def label(meth, eps=None):
        return f"`{meth}`" if eps is None else f"`{meth}`, ε = {setting(eps)}"

    rows = [[label(m, proto.get("pixel_epsilon_l2") if m == "pixel" else None),
             frac(d["judge_success"][m], se.get("judge_success", {}).get(m)),
             pm(d["l2_to_start"][m], se.get("l2_to_start", {}).get(m)),
             pm(d["range_residual"][m], se.get("range_residual", {}).get(m)),
             frac(d.get("target_probability", {}).get(m), se.get("target_probability", {}).get(m)),
             num(gevals.get(m)), num(spp.get(m), 3)] for m in d["judge_success"]]
    rows += [[label("pixel", float(eps)), frac(s["judge_success"], s.get("judge_success_se")),
              pm(s["l2_to_start"], s.get("l2_to_start_se")), pm(s["range_residual"], s.get("range_residual_se")),
              DASH, DASH, DASH] for eps, s in d.get("pixel_epsilon_sweep", {}).items()]
    return "\n\n".join([
        (f"{d.get('n_pairs', '?')} (start, target) pairs, ± 1.96·SE; generator `{proto.get('generator', '?')}`, "
         f"guide `{proto.get('guide', '?')}`, judge `{proto.get('judge', '?')}`, {proto.get('steps', '?')} steps. "
         "Judge success: the independent judge picks the target; range residual: per-pixel squared distance to the "
         "result's projection onto the generator; p(target): under the guide (— : not recorded)."),
        table(["method", "judge success", "ℓ2 to start", "range residual", "p(target)", "G evals / pair",
               "s / pair"], rows)])


def random_relu(d: dict) -> str:
    s = d.get("setting", {})
    k = s.get("widths", [None])[0]
    ratios = list(d["success_rate"])
    err, err_se = d["noisy_error"], d.get("noisy_stderr", {})
    fit = d.get("noisy_slope_fit_m")
    return "\n\n".join([
        (f"Noiseless recovery: success rate (relative error < {setting(s.get('success_threshold'))}) over "
         f"{s.get('trials', '?')} trials, widths {' → '.join(map(str, s.get('widths', [])))}, "
         f"{s.get('steps', '?')} subgradient steps; no SE recorded."),
        table([f"m / k (k = {k})"] + ratios,
              [["1 start"] + [frac(d["success_rate"][r]) for r in ratios]]
              + ([["4 starts"] + [frac(d["success_rate_4_starts"].get(r)) for r in ratios]]
                 if "success_rate_4_starts" in d else [])),
        f"Noisy recovery, ‖η‖ = {setting(s.get('noise_norm'))}: error ‖G(ẑ) − G(z*)‖ ± 1.96·SE.",
        table(["m"] + list(err), [["error"] + [pm(v, err_se.get(m)) for m, v in err.items()]]),
        f"Fitted log-log slope {num(d.get('noisy_slope'), 3)}"
        + (f" over m ∈ {{{', '.join(map(str, fit))}}}" if fit else "")
        + f" (theory -0.5); {num(d.get('noisy_slope_all_m'), 3)} over all m."])


def attack_efficiency(d: dict) -> str:
    n = d["n"]
    parts = [f"{d.get('model', '?')}; PGD at several step counts, n = {n} MNIST test images; robust accuracy "
             "[95 % Wilson interval] against projections spent per image (crafting and success checks)."]
    summary = []
    for key, curves in d["curves"].items():
        kinds = [k for k, v in curves.items() if isinstance(v, list)]
        parts.append(f"`{key}`:")
        parts.append(table(["gradient", "steps", "projections / image", "robust accuracy", "seconds"],
                           [[f"`{k}`", num(p["steps"]), num(p["projections_per_image"], 3),
                             ci(p["robust_accuracy"], wilson(p["robust_accuracy"], n)), num(p["seconds"], 3)]
                            for k in kinds for p in curves[k]], left=2))
        best = curves.get("bpda_eot_best", {})
        summary.append([f"`{key}`", ci(best.get("robust_accuracy")), num(best.get("projections_per_image"), 3)]
                       + [DASH if curves.get(f"{k}_projection_ratio") is None
                          else num(curves[f"{k}_projection_ratio"], 2) for k in ("implicit", "implicit_range")])
    parts.append("Projections the implicit attacks need to reach BPDA + EOT's best robust accuracy, as a fraction of "
                 "what BPDA + EOT spent (— : never reached; target ≤ 0.33):")
    parts.append(table(["threat", "BPDA+EOT best", "its projections / image", "implicit ratio", "implicit_range ratio"],
                       summary))
    return "\n\n".join(parts)


def batch_invariance(d: dict) -> str:
    rows = []
    for preset, per_input in d["presets"].items():
        for inp, r in per_input.items():
            rows.append([f"`{preset}`", inp, f"{r['same_prediction_alone']:.3f}",
                         f"{r['same_prediction_batches_of_7']:.3f}", "yes" if r["bitwise_equal_logits_alone"] else "no",
                         num(r["max_logit_difference_alone"], 3)])
    return "\n\n".join([
        (f"Classifier A behind each projection preset on n = {d['n']} MNIST test images: the fraction of inputs "
         "predicted as in a batch of 100 when alone and in batches of 7, whether the logits are bitwise equal, and "
         f"the largest logit difference; {d.get('torch_threads', '?')} threads. `(min_rows=1)`: without the "
         "library's padding of every network pass to a fixed number of rows."),
        table(["preset", "input", "same alone", "same in 7s", "bitwise", "max Δ logit"], rows, left=2)])


def _quality_cells(q: dict) -> list[str]:
    return [num(q["fid"], 3), f"{q['precision']:.3f}", f"{q['recall']:.3f}", f"{q.get('density', 0):.3f}",
            f"{q.get('coverage', 0):.3f}"]


def generator_quality(d: dict) -> str:
    rows = [[f"`{name}`"] + _quality_cells(q) + [pm(q["projection"]["mse"], q["projection"]["mse_se"])]
            for name, q in d["generators"].items()]
    rows += [[f"{name} (reference)"] + _quality_cells(q) + [DASH] for name, q in d["references"].items()]
    return "\n\n".join([
        (f"FID in the penultimate features of `mnist-classifier-c` (an independent classifier of ours, not "
         f"Inception: compare rows here, not with papers), precision / recall and density / coverage (k = {d['k']}); "
         f"n = {d['n']} samples against as many MNIST test images (references: the test set's halves, uniform "
         f"noise). Projection MSE: the generator's default projection of {d['n_proj']} test images, ± 1.96·SE."),
        table(["generator", "FID", "precision", "recall", "density", "coverage", "projection MSE"], rows)])


def gan_training(d: dict) -> str:
    rows = [[num(s["iterations"]), num(s["train_seconds_total"], 3)] + _quality_cells(s["quality"])
            + [ci(s[k]["accuracy"], wilson(s[k]["accuracy"], s[k]["n"]))
               for k in ("defense_gan_clean", "defense_gan_fgsm_linf_0.3_transfer")] for s in d["stages"]]
    rows += [[f"{name} (reference)", DASH] + _quality_cells(q) + [DASH, DASH] for name, q in d["references"].items()]
    return "\n\n".join([
        (f"Recipe `{d['recipe']}` on Defense-GAN's generator architecture, evaluated every stage: FID etc. as in "
         f"the generator-quality table ({d['fid_n']} samples); classifier A behind Defense-GAN's projection "
         f"(L = 200, R = 10) on {d['n']} MNIST test images, clean and FGSM ε = 0.3 crafted on the classifier "
         "[95 % Wilson interval]; the paper reports 98.8 % on FGSM."),
        table(["iterations", "train s", "FID", "precision", "recall", "density", "coverage", "clean",
               "FGSM 0.3"], rows)])


def gradient_agreement(d: dict) -> str:
    steps = d["steps"]
    rows = [[f"`{g}`", mode] + [pm(c["agreement"], c["se"], 2) for c in cells]
            for g, modes in d["generators"].items() for mode, cells in modes.items()]
    return "\n\n".join([
        ("Agreement ± 1.96·SE (Carlini et al. 2019's gradient check: ~1 exact, ~0 useless) of each attack "
         "gradient with central finite differences of the defended model's loss, classifier A behind each "
         f"generator's default projection, n = {d['n']} MNIST test images × {d['directions']} random directions, "
         "at finite-difference step h (ℓ2); the sanity check `gradients_informative` uses h = 0.05 on 8 images."),
        table(["generator", "gradient"] + [f"h = {h:g}" for h in steps], rows, left=2)])


def generic(d: dict) -> str:
    """Files without a renderer of their own: their top-level numbers."""
    rows = [[f"`{k}`", num(v)] for k, v in sorted(d.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "No dedicated renderer; top-level numbers.\n\n" + table(["key", "value"], rows or [[DASH, DASH]])


def _stage_rows(stages: list[dict], n: int) -> list[list[str]]:
    """What each attack of a suite added: per threat model and ε, samples attacked, new breaks, left, seconds."""
    return [[f"`{s['attack']}`", f"{s['threat']} {s['epsilon']:g}", str(s["attacked"]), str(s["broken"]),
             f"{s['left'] / n:.3f}", num(s["seconds"], 3)] for s in stages]


def _current(entry: dict, suite: str) -> dict | None:
    """A row's result for the newest version of ``suite`` (keys ``<suite>-v<version>``)."""
    versions = [(int(k.rsplit("-v", 1)[1]), v) for k, v in entry.items()
                if k.startswith(f"{suite}-v") and k.rsplit("-v", 1)[1].isdigit()]
    return max(versions, key=lambda kv: kv[0])[1] if versions else None


def evaluation_speed(d: dict) -> str:
    """The standard suite against the per-attack table, per row: worst cases, time, projections, stages."""
    out = []
    for row, entry in d["rows"].items():
        cells = []
        for suite, r in entry.items():
            if not isinstance(r, dict) or "worst_case" not in r:
                continue
            secs = r.get("seconds", {})
            wc = r["worst_case"]
            cells.append([f"`{suite}`", str(r["n"]),
                          *(ci(wc[k]["accuracy"], wc[k].get("ci95")) if k in wc else DASH for k in ("linf@0.3", "l2@3.8")),
                          num(secs.get("wall_total"), 4), num(secs.get("cpu_total"), 4),
                          num(secs.get("records_attack_seconds") or r.get("records_attack_seconds_linf_l2"), 4),
                          num((r.get("projections_per_image") or {}).get("attacked_model"), 3),
                          ", ".join(f"{k.split('@')[0]} {'yes' if v else 'NO' if v is False else DASH}"
                                    for k, v in (r.get("converged") or {}).items()) or DASH])
        out.append(f"**{row}**\n\n" + table(["suite", "n", "worst ℓ∞ 0.3 [95 %]", "worst ℓ2 3.8 [95 %]", "wall s",
                                               "CPU s", "attack s (records)", "projections / image", "converged"],
                                              cells))
        std = _current(entry, "standard")
        if std and std.get("stages"):
            out.append(f"What each attack of `standard` v{std['suite']['version']} added on {row} (robust accuracy "
                       "left after it):\n\n"
                       + table(["attack", "threat, ε", "attacked", "new breaks", "left", "seconds"],
                               _stage_rows(std["stages"], std["n"])))
    return ("Classifier A on MNIST; the `standard` suite (survivor cascade + escalation) against the per-attack "
            "table on the same images (`columns_committed`: the committed per-attack run, not rerun). Wall and CPU "
            "seconds of the whole run (evaluation, checks, report; 2 worker processes).\n\n" + "\n\n".join(out))


def headline(results: Path) -> str:
    """README's summary: a few numbers from several results files (each row says where it comes from)."""
    def load(name: str) -> dict | None:
        path = Path(results) / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    rows = []
    ev = load("evaluation_speed")
    for row, what in (("default_vae20", "default projection, `mnist-vae20`"),
                      ("defense_gan_sngan", "Defense-GAN's projection, `mnist-sngan-inv`")):
        r = _current((ev or {}).get("rows", {}).get(row) or {}, "standard")
        if r:
            wc = r["worst_case"]
            conv = r.get("converged", {})
            rows.append([f"classifier A behind the {what}: `standard` suite, worst case", str(r["n"]),
                         ci(wc["linf@0.3"]["accuracy"], wc["linf@0.3"]["ci95"])
                         + ("" if conv.get("linf@0.3") else " (upper bound)"),
                         ci(wc["l2@3.8"]["accuracy"], wc["l2@3.8"]["ci95"])
                         + ("" if conv.get("l2@3.8") else " (upper bound)"),
                         f"{num(r['seconds']['wall_total'], 3)} s wall", "`evaluation_speed.json`"])
    cs = load("cs_mnist")
    if cs:
        mse = cs["per_pixel_mse"]
        rows.append(["compressed sensing, MNIST, m = 100 Gaussian measurements: per-pixel MSE, ILO / CSGM / Lasso",
                     str(cs["n_images"]), " / ".join(num(mse[k]["100"], 3) for k in ("ilo", "csgm", "lasso")), DASH,
                     DASH, "`cs_mnist.json`"])
    gq = load("generator_quality")
    if gq:
        fid = {k: v.get("fid") for k, v in gq["generators"].items()}
        rows.append(["generator FID (our classifier's features): `mnist-sngan` / `mnist-vae20` / `mnist-wgan`",
                     str(gq["n"]), " / ".join(num(fid.get(k), 3) for k in ("mnist-sngan", "mnist-vae20", "mnist-wgan")),
                     DASH, DASH, "`generator_quality.json`"])
    return table(["result", "n", "ℓ∞ 0.3 (or the value)", "ℓ2 3.8", "time", "from"], rows)


def defense_mnist_suite(d: dict) -> str:
    """``defense_mnist.py --suite NAME``: per row the worst cases and the stages."""
    rows = [[f"`{r}`", str(v["n"]), frac(v["clean"]["accuracy"]),
             *(ci(v["worst_case"][k]["accuracy"], v["worst_case"][k]["ci95"]) if k in v["worst_case"] else DASH
               for k in ("linf@0.3", "l2@3.8", "on_manifold@1.5"))] for r, v in d["rows"].items()]
    suite = d.get("suite", {})
    return (f"Classifier A, suite `{suite.get('name')}` v{suite.get('version')}: worst case per threat model after "
            "every attack of the suite and its escalation [95 % Wilson interval].\n\n"
            + table(["row", "n", "clean", "worst ℓ∞ 0.3", "worst ℓ2 3.8", "worst on-manifold 1.5"], rows))


def robust_mnist_estimate(d: dict) -> str:
    rows = [[f"`{k}`", v["description"], num(v["epoch_cpu_seconds"], 3), str(v["epochs"]),
             num(v["training_cpu_hours"], 3)] for k, v in d["recipes"].items()]
    return "\n\n".join([
        ("CPU seconds per training epoch of each recipe of `benchmarks/robust_mnist.py` (classifier A unless the "
         "recipe says otherwise; 60,000 MNIST images, both cores), timed on a few batches after two warm-up batches, and what the recipe's epochs cost."),
        table(["recipe", "what", "CPU s / epoch", "epochs", "CPU h"], rows, left=2)])


def robust_mnist(d: dict) -> str:
    def acc(e) -> str:
        return DASH if not e else ci(e["accuracy"], e.get("ci95"))

    def worst(suite: dict | None, threat: str) -> str:
        if not suite:
            return DASH
        hit = [(k, v) for k, v in suite["worst_case"].items() if k.startswith(threat + "@")]
        if not hit:
            return DASH
        unconverged = (suite.get("converged") or {}).get(hit[0][0]) is False  # escalation still breaking: a bound
        failed = [k for k, ok in (suite.get("sanity") or {}).items() if ok is False]  # a check that flags the run
        return acc(hit[0][1]) + (" (not converged)" if unconverged else "") + \
            (f" (fails {', '.join(failed)})" if failed else "")

    published = [[p["name"], f"{p['threat_model']} {p['eps']:g}", num(p["clean_acc"]), num(p.get("autoattack_acc")),
                  num(p.get("reported"))] for p in d.get("published", [])]

    def clean(m: dict) -> dict | None:  # a row evaluated by the suite alone (ABS) has the suite's clean accuracy
        return m.get("clean") or (m.get("standard_suite") or {}).get("clean")

    ours = []
    earlier = [(f"`{k.split('@')[0]}`, earlier weights", m) for k, m in d.get("earlier_weights", {}).items()]
    sizes = [clean(m)["n"] for m in [*d.get("models", {}).values(), *(m for _, m in earlier)] if clean(m)]
    for name, m in [*d.get("models", {}).items(), *earlier]:
        aa = m.get("autoattack", {})
        overall = m.get("worst_case") or {}
        aa_l2 = acc((aa.get("l2") or {}).get("worst_case"))
        later = (m.get("autoattack_on_survivors") or {}).get("l2")
        if later is not None:  # run on what the other attacks left: it counts in the worst case, alone it says nothing
            left = len(later["indices"])
            aa_l2 = (f"not run on the {left} left" if "not_run" in later else
                     f"{left - later['worst_case']['correct'] if left else 0} more of the {left} left")
        label = name if name.startswith("`") else f"`{name}`"
        if clean(m) and clean(m)["n"] != max(sizes):
            label += f" (first {clean(m)['n']})"
        ours.append([label, acc(clean(m)), acc((aa.get("linf") or {}).get("worst_case")),
                     aa_l2, worst(m.get("standard_suite"), "linf"),
                     worst(m.get("standard_suite"), "l2"), acc(overall.get("linf")),
                     acc(overall.get("l2")) + (" (upper bound)" if "upper_bound" in (overall.get("l2") or {}) else ""),
                     num((m.get("training") or {}).get("cpu_hours"), 3),
                     f"`{m['digest'][:8]}`" if m.get("digest") else "unrecorded" if m.get("training") else DASH])
    n = set(sizes)
    return "\n\n".join([
        "Published (percent; AutoAttack on 10,000 test images unless noted):",
        table(["model", "threat", "clean", "AutoAttack", "reported"], published),
        (f"Trained here (fractions with 95 % Wilson intervals; the first {', '.join(map(str, sorted(n))) or '—'} test "
         "images; AutoAttack 'standard' at its published budget; the `standard` suite's worst case; **worst**: per "
         "sample over every attack run on the model (AutoAttack, the suite, the APGD-CE probe; ABS: the suite, its "
         "latent descent, then AutoAttack on what they left); training CPU hours summed per epoch, a warm start's "
         "included; *earlier weights*: a recipe's row measured on weights it has since been retrained away from; "
         "**weights**: the digest of the weights measured, *unrecorded* for rows from before rows kept it):"),
        table(["model", "clean", "AA ℓ∞ 0.3", "AA ℓ2 2.0", "suite ℓ∞ 0.3", "suite ℓ2 2.0", "**worst ℓ∞ 0.3**",
               "**worst ℓ2 2.0**", "train CPU h", "weights"], ours or [[DASH] * 10]),
        *[f"`{name}` (first {m['standard_suite']['clean']['n']}): the classifier alone on the same images, worst "
          f"ℓ∞ 0.3 {acc(m['undefended_worst_case']['linf'])}, ℓ2 2.0 {acc(m['undefended_worst_case']['l2'])}; "
          f"behind the projection, on-manifold 1.5 {worst(m['standard_suite'], 'on_manifold')}."
          for name, m in d.get("models", {}).items() if m.get("undefended_worst_case")],
        *[f"The seed's claim, `{name}` (first {m['standard_suite']['clean']['n']}): behind the projection, worst "
          f"ℓ∞ 0.3 {worst(m['standard_suite'], 'linf')}, ℓ2 2.0 {worst(m['standard_suite'], 'l2')}; the classifiers "
          "trained at the same budget, alone, on the same images: " + "; ".join(
              f"`{o}` ℓ∞ 0.3 {acc(w['linf'])}, ℓ2 2.0 {acc(w['l2'])}" for o, w in m["same_budget_undefended"].items())
          + "." for name, m in d.get("models", {}).items() if m.get("same_budget_undefended")],
        *[f"`{name}` under the paper's own attack alone (latent descent towards the closest wrong class's "
          f"reconstruction, Schott et al. 2019): ℓ2 2.0 {acc(m['latent_descent']['l2']['worst_case'])}; it counts "
          "in the worst case." for name, m in d.get("models", {}).items() if m.get("latent_descent")]])


def ambient_mnist_estimate(d: dict) -> str:
    rows = [[f"`{k}`", num(v["cpu_seconds"], 3), str(v.get("iterations_timed", v.get("images_timed"))),
             num(v.get("cpu_hours_per_run", v.get("cpu_hours_60000")), 3)] for k, v in d["runs"].items()]
    return (f"What `benchmarks/ambient_mnist.py` costs here, timed on a few iterations or images and scaled: a training "
            f"run of {d['iterations']:,} iterations, the 'unmeasure' inversion of 60,000 images, one generator's "
            "CSGM / ILO evaluation (30 images × 3 m) and its defense's clean accuracy.\n\n"
            + table(["part", "CPU s timed", "iterations / images timed", "CPU h scaled"], rows))


def robust_mnist_probe(d: dict) -> str:
    rows = [[f"`{p['recipe']}`", str(p["epochs_done"]) + ("" if p["complete"] else " (unfinished)")
             + (f" (epoch {p['weights_epoch']}'s weights)" if p.get("weights_epoch", p["epochs_done"]) != p["epochs_done"]
                else ""),
             ci(p["clean"]["accuracy"], p["clean"].get("ci95")),
             *_probe_cells(p), num(p["cpu_seconds"], 3), f"`{p['digest'][:8]}`"] for p in d.get("probes", [])]
    n = {p["clean"]["n"] for p in d.get("probes", [])}
    return (f"APGD-CE (100 iterations) in the recipe's threat model on the first {', '.join(map(str, sorted(n)))} "
            "test images of a "
            "checkpoint, taken between epochs to decide whether more training is worth its CPU hours: an upper bound "
            "on AutoAttack's number, not a leaderboard entry. A recipe trained again gets other weights (another "
            "digest): CPU training here is not bit-reproducible from run to run.\n\n"
            + table(["recipe", "epochs", "clean", "APGD-CE ℓ∞ 0.3", "APGD-CE ℓ2 2.0", "CPU s", "weights"],
                    rows or [[DASH] * 7]))


def _probe_cells(p: dict) -> list[str]:
    """A probe entry's APGD-CE accuracy under its threat model's column (ℓ∞ 0.3, ℓ2 2.0), a dash under the other."""
    return [ci(p[k]["accuracy"], p[k].get("ci95")) if k in p else DASH for k in ("apgd_ce_linf_0.3", "apgd_ce_l2_2.0")]


RENDERERS = {"projection_speed": projection_speed, "evaluation_speed": evaluation_speed, "cs_mnist": cs_mnist, "defense_mnist": defense_mnist,
             "manifold_at_mnist": manifold_at_mnist, "manifold_at_mnist_timing": manifold_at_mnist_timing,
             "guided_mnist": guided_mnist, "random_relu": random_relu, "attack_efficiency": attack_efficiency,
             "batch_invariance": batch_invariance, "generator_quality": generator_quality,
             "gradient_agreement": gradient_agreement, "robust_mnist_estimate": robust_mnist_estimate,
             "robust_mnist": robust_mnist, "robust_mnist_probe": robust_mnist_probe,
             "ambient_mnist_estimate": ambient_mnist_estimate}


# ---------------------------------------------------------------------------------------------- README
def render(results_dir: Path | str = RESULTS) -> dict[str, str]:
    """{NAME: Markdown} for every ``NAME.json`` in ``results_dir`` (``X_quick`` renders like ``X``)."""
    blocks = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        fn = (RENDERERS.get(path.stem) or RENDERERS.get(path.stem.removesuffix("_quick"))
              or (gan_training if path.stem.startswith("gan_training_") else None)
              or (defense_mnist_suite if path.stem.startswith(("defense_mnist_standard", "defense_mnist_columns"))
                  else None)
              or (defense_mnist if path.stem.startswith("defense_mnist_") else None)  # another generator
              or (manifold_at_mnist if path.stem.startswith("manifold_at_mnist_seed") else generic))  # another seed
        blocks[path.stem] = fn(data).rstrip("\n") + "\n\n" + source(path.stem, data)
    blocks["headline"] = headline(Path(results_dir)) + "\n\nRendered from `benchmarks/results/` (more in docs/results.md)."
    return blocks


def blocks_in(readme_text: str) -> dict[str, str]:
    """{NAME: text between the markers} of README's result blocks."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(readme_text)}


def update(readme_text: str, blocks: dict[str, str]) -> str:
    """``readme_text`` with each marked block replaced by ``blocks[NAME]`` (blocks without markers are ignored)."""
    def sub(m: re.Match) -> str:
        name = m["name"]
        return f"{m['start']}\n{blocks[name]}\n\n{m['end']}" if name in blocks else m[0]

    return BLOCK.sub(sub, readme_text)


def check(readme_text: str, blocks: dict[str, str], label: str = "README.md") -> str:
    """Empty when the page shows exactly its blocks as rendered; otherwise what disagrees (a block without a results
    JSON, a unified diff). Which page holds which block: :func:`check_pages`."""
    have = set(blocks_in(readme_text))
    problems = [f"{label} block without a results JSON: {n}" for n in sorted(have - set(blocks))]
    diff = difflib.unified_diff(readme_text.splitlines(keepends=True),
                                update(readme_text, blocks).splitlines(keepends=True),
                                fromfile=label, tofile=f"{label} (rendered from the JSON)")
    return "".join(p + "\n" for p in problems) + "".join(diff)


def check_pages(pages: dict[str, str], blocks: dict[str, str]) -> str:
    """:func:`check` of every page, and every block shown on exactly one page."""
    report = "".join(check(text, blocks, label) for label, text in pages.items())
    shown = [n for text in pages.values() for n in blocks_in(text)]
    report += "".join(f"results JSON without a block in {', '.join(pages)}: {n}\n" for n in sorted(set(blocks) - set(shown)))
    report += "".join(f"block shown twice: {n}\n" for n in sorted({n for n in shown if shown.count(n) > 1}))
    return report


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="do not write; exit 1 with a diff when a page is out of date")
    p.add_argument("--pages", type=Path, nargs="+", default=PAGES, help="the pages holding result blocks")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    pages = {str(path): path.read_text(encoding="utf-8") for path in args.pages}
    blocks = render(args.results)
    report = check_pages(pages, blocks)
    if args.check:
        print(report, end="")
        return 1 if report else 0
    for path in args.pages:
        text = pages[str(path)]
        new = update(text, blocks)
        if new != text:
            _write_atomic(path, new)
        print(f"{path}: {len(blocks_in(text))} result blocks {'updated' if new != text else 'unchanged'}")
    missing = sorted(set(blocks) - {n for text in pages.values() for n in blocks_in(text)})
    for name in missing:
        print(f"no <!-- results:{name} --> block in any page", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
