"""The demo: the whole story on a small dataset in a few minutes.

Load (or train) a generator and a classifier, report their quality, then attack the undefended and the
defended classifier with the non-adaptive transfer attack of the Defense-GAN paper, adaptive attacks
(BPDA, implicit differentiation of the projection, latent reparameterisation; Athalye et al. 2018) and an
on-manifold attack, run the sanity checks and write reports, plots and image grids. The attacks come from
the registry (:mod:`manifold_defense.eval.registry`) with :meth:`~manifold_defense.eval.AttackBudget.demo`
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
from manifold_defense.eval import AttackBudget, build_attack, evaluate, sanity_checks, write_report
from manifold_defense.validation import InputError
from manifold_defense.viz import save_image_grid

__all__ = ["DEMO_ATTACKS", "run_demo", "render_table"]

#: per dataset: (registered attack, ε, the name it is reported under)
DEMO_ATTACKS = {
    "digits": [("fgsm_transfer", (0.1, 0.2, 0.3), "fgsm_transfer"), ("pgd_linf", (0.1, 0.2, 0.3), "pgd_linf_bpda"),
               ("pgd_linf_implicit", (0.3,), "pgd_linf_implicit"), ("pgd_l2", (1.0,), "pgd_l2_bpda"),
               ("pgd_l2_implicit", (1.0,), "pgd_l2_implicit"), ("latent_reparam_l2", (1.0,), "latent_reparam_l2"),
               ("on_manifold", (1.0,), "on_manifold")],
    "mnist": [("fgsm_transfer", (0.3,), "fgsm_transfer"), ("pgd_linf", (0.3,), "pgd_linf_bpda"),
              ("pgd_linf_implicit", (0.3,), "pgd_linf_implicit"), ("pgd_l2", (3.8,), "pgd_l2_bpda"),
              ("pgd_l2_implicit", (3.8,), "pgd_l2_implicit"), ("latent_reparam_l2", (3.8,), "latent_reparam_l2"),
              ("on_manifold", (1.5,), "on_manifold")],
}
_MODELS = {"digits": ("digits-vae", "digits-classifier"), "mnist": ("mnist-vae20", "mnist-classifier-a")}


def run_demo(out: str | Path, *, dataset: str = "digits", n: int = 100, device: str | torch.device = "cpu",
             progress: bool = True, log: Callable[[str], None] = print, data_path: str | Path | None = None) -> dict:
    """Run the demo on ``n`` test images of ``dataset``, writing into ``out``; returns the summary
    (also written to ``out/demo.json``). ``data_path``: where MNIST is (default ``$MANIFOLD_DEFENSE_DATA``)."""
    if dataset not in _MODELS:
        raise InputError(f"dataset must be one of {', '.join(_MODELS)}, got {dataset!r}")
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
    robustness = _robustness(clf, gen, x[:n], y[:n], out, progress, log, DEMO_ATTACKS[dataset])
    summary = {"dataset": dataset, "n_test": len(y), "n_attacked": min(n, len(y)),
               "generator": {"name": gen_name, "test_recon_mse_per_pixel": rec_mse},
               "classifier": {"name": clf_name, "test_accuracy": clean_acc, "accuracy_on_reconstructions": rec_acc},
               "robustness": robustness, "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2))
    log(render_table(summary))
    log(f"\n  wrote {grid}, {out / 'demo.json'} and the reports in {out}  ({summary['seconds']:.1f} s)")
    return summary


def _robustness(clf, gen, x, y, out: Path, progress: bool, log: Callable[[str], None], attacks: list) -> dict:
    """Undefended vs defended; non-adaptive (transfer) vs adaptive (BPDA, implicit) vs on-manifold attacks."""
    defended = DefendedModel(clf, gen).eval()
    specs = [build_attack(name, eps, classifier=clf, generator=gen, budget=AttackBudget.demo(), label=label)
             for name, eps, label in attacks]
    result = {}
    for name, model in (("undefended", clf), ("defended", defended)):
        log(f"\n  attacking the {name} classifier ({len(y)} test images) ...")
        ev = evaluate(model, x, y, specs, batch_size=50, out_dir=out / name, progress=progress)
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
    """The demo's accuracy table (undefended vs defended, every attack and ε) and its sanity verdicts."""
    res = summary["robustness"]
    lines = [f"\n  accuracy (n = {summary['n_attacked']})            undefended   defended"]
    attacks = DEMO_ATTACKS[summary["dataset"]]
    rows = [("clean", None)] + [(f"{label} ε={e:g}", f"{label}@{e:g}") for _, eps, label in attacks for e in eps]
    for label, key in rows:
        vals = [res[m]["clean"]["accuracy"] if key is None else res[m]["robust"][key]["accuracy"]
                for m in ("undefended", "defended")]
        lines.append(f"  {label:28s} {vals[0]:9.1%} {vals[1]:10.1%}")
    for m in ("undefended", "defended"):
        failed = [k for k, ok in res[m]["sanity"].items() if not ok]
        lines.append(f"  sanity checks, {m}: {'all pass' if not failed else 'FAILED: ' + ', '.join(failed)}")
    for threat, worst in res["defended"].get("worst_case", {}).items():
        lines.append(f"  defended worst case {threat}: {worst['accuracy']:.1%} (every attack of that threat model)")
    lines.append("  (fgsm_transfer is the non-adaptive protocol of the Defense-GAN paper; *_bpda and *_implicit attack\n"
                 "   the projection adaptively — BPDA's straight-through gradient, the implicit derivative of the\n"
                 "   converged projection; latent_reparam_l2 searches the range within ε of x (Athalye et al.);\n"
                 "   on_manifold stays on the generator's range, ‖G(z') − G(ẑ)‖₂ ≤ η.)")
    return "\n".join(lines)
