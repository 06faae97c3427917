"""Reports of an evaluation: ``report.json`` (with RobustBench's fields), ``report.md`` (accuracies with 95 %
Wilson intervals, worst cases, sanity verdicts, which projection each attack crafted on),
``accuracy_vs_epsilon.png`` and an image grid of clean, adversarial and projected examples."""

from __future__ import annotations

import json
import os
from pathlib import Path

from manifold_defense.checkpoint import atomic_write_text
from manifold_defense.eval.robustness import Evaluation

__all__ = ["write_report"]

_VERDICT = {True: "PASS", False: "**FAIL**", None: "COULD NOT RUN"}


def _fmt(p: float, ci: tuple[float, float]) -> str:
    return f"{p:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_report(ev: Evaluation, out_dir: str | os.PathLike, *, title: str = "robustness") -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns their paths by kind ('json', 'markdown', 'plot',
    'examples')."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = ev.to_dict()
    atomic_write_text(out / "report.json", json.dumps(d, indent=2))
    attempts = f"; N-attempt ({ev.attempts} draws) in the last column" if ev.attempts > 1 else ""
    head = "| attack | ε | accuracy | N-attempt |" if ev.attempts > 1 else "| attack | ε | accuracy |"
    suite = ev.suite or {"name": "custom"}
    if suite.get("name") == "custom":
        about = ("**Attacks chosen by hand, not a suite: the worst case covers only these attacks** (a suite — "
                 "`standard`, `rand`, `columns` — runs the strongest attacks we have, to convergence).")
    else:
        about = (f"Suite `{suite['name']}` v{suite.get('version')}"
                 + (" (survivor cascade: each attack's accuracy is after it and every earlier one of its threat "
                    "model)" if suite.get("cascade") else " (every attack on every sample)")
                 + f", escalation up to {suite.get('escalation_rounds')} doublings.")
    lines = [f"# {title}", "", about, "", f"n = {d['n']}; accuracy [95 % Wilson interval]{attempts}", "", head,
             "|---|---|---|---|" if ev.attempts > 1 else "|---|---|---|"]

    def row(label: str, eps: str, key, worst: bool = False) -> str:
        if worst:
            vals = ev.worst_case_samples()[key]
            text = _fmt(sum(vals) / len(vals), d["worst_case"][f"{key[0]}@{key[1]:g}"]["ci95"])
        else:
            text = _fmt(ev.accuracy(key)[0], ev.interval(key))
        cells = [label, eps, f"**{text}**" if worst else text]
        if ev.attempts > 1:
            if worst:
                vals = ev.worst_case_samples(attempts=ev.attempts)[key]
                cells.append(f"{sum(vals) / len(vals):.3f}")
            else:
                cells.append(f"{ev.accuracy(key, attempts=ev.attempts)[0]:.3f}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row("clean", "–", None))
    lines += [row(a, f"{e:g}", (a, e)) for (a, e) in sorted(ev.robust)]
    lines += [row(f"**worst {t}**", f"{e:g}", (t, e), worst=True) for (t, e) in ev.worst_case()]
    if ev.stages:
        lines += ["", "## What each attack added", "",
                  "Per threat model and ε, in run order: samples attacked, samples it broke that no earlier attack had, "
                  "samples left, seconds (escalation rounds: ×2, ×4 … the iterations, fresh restarts, on the survivors).",
                  "", "| attack | threat | ε | attacked | new breaks | left | seconds |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['attack']} | {s['threat']} | {s['epsilon']:g} | {s['attacked']} | {s['broken']} | {s['left']} | "
                  f"{s['seconds']:.0f} |" for s in ev.stages]
    lines += ["", "## Sanity checks", ""]
    lines += [f"- {_VERDICT[ok]} {k}: {ev.sanity_details.get(k, '')}" for k, ok in ev.sanity.items()]
    if ev.notes:
        lines += ["", "## Which projection was attacked", ""]
        lines += [f"- {a}: {note}" for a, note in sorted(ev.notes.items())]
    if ev.agreement:  # independent judges: did the label hold on the adversarial inputs?
        judges = sorted({j for v in ev.agreement.values() for j in v})
        lines += ["", "## Judges: true label given to the adversarial inputs (all / those that broke the model)", "",
                  "| attack | ε | " + " | ".join(judges) + " |", "|---|---|" + "---|" * len(judges)]
        for key, per in ev.judge_agreement().items():
            a, e = key.rsplit("@", 1)
            cells = [f"{per[j]['all']['accuracy']:.3f} / {per[j]['broken']['accuracy']:.3f} (n = {per[j]['broken']['n']})"
                     for j in judges]
            lines.append(f"| {a} | {e} | " + " | ".join(cells) + " |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": _plot(ev, out / "accuracy_vs_epsilon.png",
                                                                                      title)}
    if ev.examples:
        from manifold_defense.viz import save_image_grid

        names = list(ev.examples)
        paths["examples"] = save_image_grid([ev.examples[k] for k in names], out / "examples.png", row_labels=names,
                                            title=title)
    return paths


def _plot(ev: Evaluation, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in sorted({k[0] for k in ev.robust}):
        eps = sorted(e for (b, e) in ev.robust if b == a)
        acc = [ev.accuracy((a, e))[0] for e in eps]
        ci = [ev.interval((a, e)) for e in eps]
        err = [[p - lo for p, (lo, _) in zip(acc, ci)], [hi - p for p, (_, hi) in zip(acc, ci)]]
        ax.errorbar(eps, acc, yerr=err, marker="o", ms=3, capsize=2, label=f"{a} ({ev.threats[a]})")
    ax.set_xlabel("ε")
    ax.set_ylabel("accuracy (95 % Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
