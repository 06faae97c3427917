"""The demo: the whole story on a small dataset in a few minutes.

Load (or train) a generator and a classifier, report their quality, then attack the undefended and the
defended classifier with the non-adaptive transfer attack of the Defense-GAN paper, adaptive attacks
(BPDA, implicit differentiation of the projection, latent reparameterisation; Athalye et al. 2018) and an
on-manifold attack, run the sanity checks and write reports, plots and image grids. The attacks come from
the registry (``manifold_defense.eval.registry``) with ``AttackBudget.demo``
budgets. ``dataset='digits'`` (embedded) or ``'mnist'`` (classifier A of Defense-GAN behind the CSGM VAE,
at the threat models of the Defense-GAN and Athalye et al. evaluations; needs ``mnist.npz``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from manifold_defense import data, zoo
from manifold_defense.attacks import LinfPGD
from manifold_defense.checkpoint import atomic_write_text
from manifold_defense.classifiers import accuracy
from manifold_defense.defended import DefendedModel
from manifold_defense.eval import AttackBudget, evaluate, sanity_checks, write_report
from manifold_defense.validation import InputError
from manifold_defense.viz import save_image_grid

__all__ = ["DEMO_SUITE", "DEMO_EPSILONS", "run_demo", "render_table"]

#: the demo's suite (the default: each attack on what the earlier ones left, then escalation on the survivors)
#: and its budgets per threat model and dataset
DEMO_SUITE = "standard"
DEMO_EPSILONS = {"digits": {"linf": [0.1, 0.2, 0.3], "l2": [1.0], "on_manifold": [1.0]},
                 "mnist": {"linf": [0.3], "l2": [3.8], "on_manifold": [1.5]}}
_MODELS = {"digits": ("digits-vae", "digits-classifier"), "mnist": ("mnist-vae20", "mnist-classifier-a")}


def run_demo(out: str | Path, *, dataset: str = "digits", n: int = 100, device: str | torch.device = "cpu",
             progress: bool = True, log: Callable[[str], None] = print, data_path: str | Path | None = None,
             workers: int = 1, batch_size: int = 25) -> dict:
    """Run the demo on ``n`` test images of ``dataset``, writing into ``out``; returns the summary
    (also written to ``out/demo.json``). ``data_path``: where MNIST is (default ``$MANIFOLD_DEFENSE_DATA``);
    ``workers`` and ``batch_size``: as ``evaluate``'s (``workers`` at most the number
    of batches; > 1 spawns processes: call it under ``if __name__ == "__main__":``)."""
    if dataset not in _MODELS:
        raise InputError(f"dataset must be one of {', '.join(_MODELS)}, got {dataset!r}")
    if workers < 1 or batch_size < 1:
        raise InputError(f"workers and batch_size must be >= 1, got {workers} and {batch_size}")
    test = data.load(dataset, "test", **({"path": data_path} if data_path is not None else {}))  # fails before work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen_name, clf_name = _MODELS[dataset]
    log(f"manifold-defense demo: {dataset} — shipped models load at once; others are trained on first use and "
        f"cached under {data.cache_dir() / 'zoo'}")
    gen = zoo.get(gen_name, device, progress=progress)
    clf = zoo.get(clf_name, device, progress=progress)
    x, y = test.images.to(next(gen.parameters()).device), test.labels
    clean_acc = accuracy(clf, x, y)
    with torch.inference_mode():
        rec = gen(gen.encode(x))
        rec_mse = float((rec - x).pow(2).mean())
        rec_acc = float((clf(rec).argmax(1).cpu() == y).float().mean())
        samples = gen(gen.sample_latent(16, torch.Generator(device=x.device).manual_seed(0)))
    grid = save_image_grid([x[:16], rec[:16], samples], out / f"{gen_name}.png",
                           row_labels=["test", "G(E(x))", "samples"],
                           title=f"{gen_name}: test images, reconstructions, samples")
    se = (clean_acc * (1 - clean_acc) / len(y)) ** 0.5
    log(f"\n  {gen_name:18s} test reconstruction MSE per pixel: {rec_mse:.4f}")
    log(f"  {clf_name:18s} test accuracy: {clean_acc:.2%} ± {se:.2%} (n = {len(y)})")
    log(f"  classifier on G(E(x)) (what a projection defense feeds it): {rec_acc:.2%}")
    workers = min(workers, -(-min(n, len(y)) // batch_size))  # a worker per batch at most
    robustness = _robustness(clf, gen, x[:n], y[:n], out, progress, log, DEMO_EPSILONS[dataset], workers, batch_size)
    summary = {"dataset": dataset, "n_test": len(y), "n_attacked": min(n, len(y)),
               "generator": {"name": gen_name, "test_recon_mse_per_pixel": rec_mse},
               "classifier": {"name": clf_name, "test_accuracy": clean_acc, "accuracy_on_reconstructions": rec_acc},
               "robustness": robustness, "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2))
    log(render_table(summary))
    log(f"\n  wrote {grid}, {out / 'demo.json'} and the reports in {out}  ({summary['seconds']:.1f} s)")
    return summary


def _robustness(clf, gen, x, y, out: Path, progress: bool, log: Callable[[str], None], epsilons: dict, workers: int,
                batch_size: int) -> dict:
    """Undefended vs defended; non-adaptive (transfer) vs adaptive (BPDA, implicit) vs on-manifold attacks: the
    ``standard`` suite, each attack on the samples the earlier ones left, then escalation on what is left."""
    defended = DefendedModel(clf, gen).eval()
    result = {}
    for name, model in (("undefended", clf), ("defended", defended)):
        log(f"\n  attacking the {name} classifier ({len(y)} test images, suite {DEMO_SUITE}) ...")
        # the undefended classifier's attacks take about a second: starting worker processes would cost more
        ev = evaluate(model, x, y, suite=DEMO_SUITE, epsilons=epsilons, budget=AttackBudget.demo(), classifier=clf,
                      generator=gen, batch_size=batch_size, out_dir=out / name, progress=progress,
                      workers=workers if model is defended else 1)
        sanity_checks(ev, model, x, y)
        write_report(ev, out / name, title=f"{name}")
        result[name] = ev.to_dict()
    adv = LinfPGD(steps=20)(defended, x[:12], y[:12], epsilon=0.2).adversarial  # a BPDA example, for the picture
    with torch.no_grad():
        save_image_grid([x[:12], defended.project(x[:12]).x, adv, defended.project(adv).x], out / "defense_grid.png",
                        row_labels=["clean", "projected", "BPDA adv ε=.2", "adv projected"],
                        title="what the defense sees")
    return result


def render_table(summary: dict) -> str:
    """The demo's table: per threat model and ε, robust accuracy after each attack of the cascade (undefended vs
    defended), the worst case after escalation, and the sanity verdicts."""
    res = summary["robustness"]
    lines = [f"\n  accuracy (n = {summary['n_attacked']})                    undefended   defended",
             f"  {'clean':38s} {res['undefended']['clean']['accuracy']:9.1%} {res['defended']['clean']['accuracy']:10.1%}"]
    for group in res["defended"].get("worst_case", {}):
        threat, eps = group.split("@")
        lines.append(f"  {threat} ε={eps}")
        for s in res["defended"]["stages"]:
            key = f"{s['attack']}@{s['epsilon']:g}"
            if "escalates" in s or f"{s['threat']}@{s['epsilon']:g}" != group:
                continue
            und = res["undefended"]["robust"].get(key, {}).get("accuracy")
            lines.append(f"    after {s['attack']:30s} " + ("        -" if und is None else f"{und:9.1%}")
                         + f" {res['defended']['robust'][key]['accuracy']:10.1%}")
        vals = [res[m]["worst_case"].get(group, {}).get("accuracy") for m in ("undefended", "defended")]
        cells = ["        -" if v is None else f"{v:9.1%}" for v in vals]
        lines.append(f"    {'worst case (escalated)':36s} {cells[0]} {cells[1]:>10s}")
    for m in ("undefended", "defended"):
        failed = [k for k, ok in res[m]["sanity"].items() if not ok]
        lines.append(f"  sanity checks, {m}: {'all pass' if not failed else 'FAILED: ' + ', '.join(failed)}")
    lines.append("  (each attack runs on the samples the earlier ones left: fgsm_transfer is the non-adaptive protocol\n"
                 "   of the Defense-GAN paper; pgd_* attack the projection adaptively — BPDA's straight-through\n"
                 "   gradient, *_implicit the implicit derivative of the converged projection; latent_reparam_*\n"
                 "   search the range within ε of x (Athalye et al.); on_manifold stays on the generator's range,\n"
                 "   ‖G(z') − G(ẑ)‖₂ ≤ η. The worst case adds escalation: the most effective attack at 2×, 4× …\n"
                 "   its iterations until a doubling breaks none. The defended worst case, what each attack added\n"
                 "   and its seconds are in defended/report.md.)")
    return "\n".join(lines)
