"""Where Defense-GAN's claim stands as a GAN trains: FID and FGSM-0.3 transfer accuracy against iterations.

Trains Defense-GAN's MNIST generator architecture (latent 128) with a GAN recipe in stages, resumable: the
training checkpoint lives at ``--checkpoint`` (default under ``$MANIFOLD_DEFENSE_CACHE/runs/``), each stage
extends it by ``--stage`` generator updates, and each finished stage is evaluated once and appended to
``--out`` (a JSON file; finished stages are never redone). Per stage:

- FID in the penultimate features of ``mnist-classifier-c`` (neither the defended classifier nor the
  judge), precision and recall (Kynkäänniemi et al. 2019), ``--fid-n`` samples against as many MNIST test
  images; the test set against its other half (the floor) and uniform noise (the ceiling) for scale;
- classifier A (Samangouei et al. 2018) behind the projection onto the generator, on the first ``--n``
  MNIST test images: clean accuracy and FGSM ε = 0.3 crafted on the classifier alone (the Defense-GAN
  paper's protocol; it reports 98.8 %), with Defense-GAN's published projection (L = 200, R = 10).

Recipes (``--recipe``): ``sn-hinge`` — spectrally normalised critic, hinge loss, one critic step per
generator step, Adam 2e-4 (0.5, 0.999), batch 64, EMA 0.999 of the generator's weights (Miyato et al.
2018; Yazıcı et al. 2019) — it collapsed on this generator; ``sn-hinge-bn`` — the same with DCGAN's batch
normalisation in the generator (Radford et al. 2016) and EMA 0.995; ``wgan-gp`` — Defense-GAN's own (5
critic steps, GP 10, Adam 1e-4 (0.5, 0.9)).

    python benchmarks/gan_training.py [--recipe sn-hinge] [--iterations 20000] [--stage 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from common import provenance, pyplot, save_figure

from manifold_defense import data, zoo
from manifold_defense.attacks import FGSM
from manifold_defense.checkpoint import load_checkpoint
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.generators.dcgan import DefenseGANGenerator, WGANCritic
from manifold_defense.generators.train import train_wgan
from manifold_defense.quality import generator_quality

RECIPES = {
    "sn-hinge-bn": {"generator": {"batchnorm": True}, "critic": {"dim": 64, "spectral_norm": True},
                    "train": {"loss": "hinge", "critic_iters": 1, "lr": 2e-4, "betas": (0.5, 0.999), "batch_size": 64,
                              "ema": 0.995, "seed": 0}},
    "sn-hinge": {"critic": {"dim": 64, "spectral_norm": True},
                 "train": {"loss": "hinge", "critic_iters": 1, "lr": 2e-4, "betas": (0.5, 0.999), "batch_size": 64,
                           "ema": 0.999, "seed": 0}},
    "wgan-gp": {"critic": {"dim": 64},
                "train": {"loss": "wgan-gp", "critic_iters": 5, "gp_weight": 10.0, "lr": 1e-4, "betas": (0.5, 0.9),
                          "batch_size": 50, "seed": 0}},
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scale_references(test: torch.Tensor, feature_clf, n: int) -> dict:
    """FID of the test set's second half against its first (the floor) and of uniform noise (a ceiling)."""
    half = min(n, len(test) // 2)
    floor = generator_quality(None, test[:half], feature_clf, n=half, fake=test[half:2 * half])
    noise = torch.rand(half, *test.shape[1:], generator=torch.Generator().manual_seed(0))
    ceiling = generator_quality(None, test[:half], feature_clf, n=half, fake=noise)
    return {"test_vs_test": floor, "uniform_noise": ceiling}


def evaluate_stage(gen, clf, feature_clf, test_x, test_y, args) -> dict:
    gen.eval()
    t0 = time.perf_counter()
    quality = generator_quality(gen, test_x, feature_clf, n=args.fid_n)
    x, y = test_x[:args.n], test_y[:args.n]
    adv = FGSM()(clf, x, y, epsilon=0.3).adversarial
    model = DefendedModel(clf, gen, ProjectionConfig.defense_gan(latent_dim=gen.latent_dim)).eval()
    with torch.inference_mode():
        clean = (model(x).argmax(1) == y).double()
        fgsm = (model(adv).argmax(1) == y).double()
    acc = lambda v: {"accuracy": float(v.mean()), "stderr": float(v.std() / math.sqrt(len(v))), "n": len(v)}  # noqa: E731
    return {"quality": quality, "defense_gan_clean": acc(clean), "defense_gan_fgsm_linf_0.3_transfer": acc(fgsm),
            "eval_seconds": time.perf_counter() - t0}


def plot(out: dict, path: Path) -> None:
    plt = pyplot()

    st = out["stages"]
    its = [s["iterations"] for s in st]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(its, [s["quality"]["fid"] for s in st], "o-", label=out["recipe"])
    for name, ref in out.get("references", {}).items():
        a1.axhline(ref["fid"], ls="--", color="gray" if name == "test_vs_test" else "red",
                   label=f"{name} ({ref['fid']:.3g})")
    a1.set_yscale("log")
    a1.set_xlabel("generator iterations")
    a1.set_ylabel("FID (mnist-classifier-c features)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    for key, label in (("defense_gan_clean", "clean"), ("defense_gan_fgsm_linf_0.3_transfer", "FGSM 0.3 transfer")):
        v = [s[key]["accuracy"] for s in st]
        e = [1.96 * s[key]["stderr"] for s in st]
        a2.errorbar(its, v, yerr=e, fmt="o-", capsize=2, label=label)
    a2.axhline(0.988, ls="--", color="gray", label="Defense-GAN paper, FGSM 0.3 (98.8 %)")
    a2.set_xlabel("generator iterations")
    a2.set_ylabel(f"accuracy behind Defense-GAN's projection (n = {out['n']})")
    a2.set_ylim(0, 1.02)
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle(f"MNIST, Defense-GAN generator, recipe {out['recipe']}")
    save_figure(fig, path)


def sample_grid(ckpt: Path, stages: list[int], path: Path, generator_config: dict) -> None:
    """One row of 16 samples (the same latents) per evaluated stage: what the generator draws as it trains."""
    from manifold_defense.viz import save_image_grid

    z = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    rows, labels = [], []
    for it in stages:
        file = ckpt.with_name(f"{ckpt.stem}-{it}.pt")
        if file.is_file():
            g = DefenseGANGenerator(latent_dim=128, dim=64, **generator_config)
            g.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            with torch.inference_mode():
                rows.append(g.eval()(z))
            labels.append(f"{it} it.")
    if rows:
        save_image_grid(rows, path, row_labels=labels, title="samples per stage (same latents)")


def export_zoo(args) -> int:
    """The stage generator as the zoo's ``mnist-sngan`` (what ``zoo build mnist-sngan`` would train: same recipe,
    seed and iterations), with the stage's quality figures and training time in its metadata."""
    from manifold_defense.models import save_model

    entry, recipe = zoo.ENTRIES["mnist-sngan"], RECIPES["sn-hinge-bn"]
    if args.export_zoo != entry.train_config["iterations"]:
        raise SystemExit(f"mnist-sngan's recipe trains {entry.train_config['iterations']} iterations, not {args.export_zoo}")
    same = {k: list(v) if isinstance(v, tuple) else v for k, v in recipe["train"].items()}
    if any(entry.train_config[k] != v for k, v in same.items()) or entry.extra["critic"]["config"] != recipe["critic"]:
        raise SystemExit("the zoo recipe of mnist-sngan differs from gan_training's sn-hinge-bn")
    ckpt = Path(args.checkpoint or data.cache_dir() / "runs" / "gan-sn-hinge-bn.pt")
    result = json.loads(Path(args.out or Path(__file__).parent / "results" / "gan_training_sn-hinge-bn.json").read_text())
    stage = next(s for s in result["stages"] if s["iterations"] == args.export_zoo)
    gen = DefenseGANGenerator(latent_dim=128, dim=64, **recipe["generator"])
    gen.load_state_dict(torch.load(ckpt.with_name(f"{ckpt.stem}-{args.export_zoo}.pt"), weights_only=True))
    meta = {"zoo_name": entry.name, "zoo_spec": entry.spec(), "dataset": "mnist", "description": entry.description,
            "kind": "generator", "architecture": entry.arch, "latent_dim": 128,
            "quality": {"fid_n2000": stage["quality"]["fid"], "defense_gan_fgsm_linf_0.3_transfer":
                        stage["defense_gan_fgsm_linf_0.3_transfer"]["accuracy"]},
            "train_seconds": stage["train_seconds_total"], "exported_from": f"{ckpt.name} stage {args.export_zoo}"}
    save_model(zoo.path(entry.name), gen, meta)
    print(f"wrote {zoo.path(entry.name)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sn-hinge", choices=sorted(RECIPES))
    p.add_argument("--iterations", type=int, default=20000, help="total generator updates")
    p.add_argument("--stage", type=int, default=2000, help="generator updates between evaluations")
    p.add_argument("--n", type=int, default=100, help="test images for the defended accuracies")
    p.add_argument("--fid-n", type=int, default=2000, help="samples (and test images) for FID / precision / recall")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--export-zoo", type=int, default=None, metavar="ITERATIONS",
                   help="write the sn-hinge-bn generator of that (evaluated) stage into the zoo cache as mnist-sngan "
                        "(it must be the zoo recipe's iteration count), then exit")
    args = p.parse_args(argv)
    if args.export_zoo is not None:
        return export_zoo(args)
    if args.stage < 100 or args.stage % 100 or args.iterations % args.stage:
        p.error("--stage must be a multiple of 100 and divide --iterations")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]
    ckpt = Path(args.checkpoint or data.cache_dir() / "runs" / f"gan-{args.recipe}.pt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out or Path(__file__).parent / "results" / f"gan_training_{args.recipe}.json")
    out = json.loads(out_path.read_text()) if out_path.exists() else {"recipe": args.recipe, "stages": []}
    out.update(recipe_settings={k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                       for k, v in recipe.items()}, n=args.n, fid_n=args.fid_n)
    done = {s["iterations"] for s in out["stages"]}
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    clf, feature_clf = zoo.get("mnist-classifier-a").eval(), zoo.get("mnist-classifier-c").eval()
    if "references" not in out:
        out["references"] = scale_references(test.images, feature_clf, args.fid_n)
    for target in range(args.stage, args.iterations + 1, args.stage):
        if target in done:
            continue
        torch.manual_seed(0)  # the initial weights (a resumed run loads its checkpoint over them)
        gen = DefenseGANGenerator(latent_dim=128, dim=64, **recipe.get("generator", {}))
        critic = WGANCritic(**recipe["critic"])
        t0 = time.perf_counter()
        train_wgan(gen, critic, train.images, iterations=target, iterations_per_epoch=100, path=ckpt,
                   progress=False, **recipe["train"])
        seconds = float(sum(h.get("seconds", 0.0) for h in load_checkpoint(ckpt)["metadata"].get("history", [])))
        stage = {"iterations": target, "train_seconds_total": seconds, "stage_wall_seconds": time.perf_counter() - t0}
        stage |= evaluate_stage(gen, clf, feature_clf, test.images, test.labels, args)
        torch.save(gen.state_dict(), ckpt.with_name(f"{ckpt.stem}-{target}.pt"))  # the generator at this stage
        out["stages"].append(stage)
        out["provenance"] = provenance(args)
        _write_atomic(out_path, json.dumps(out, indent=2))
        plot(out, out_path.with_suffix(".png"))
        sample_grid(ckpt, [s["iterations"] for s in out["stages"]], out_path.with_name(out_path.stem + "_samples.png"),
                    recipe.get("generator", {}))
        print(json.dumps({"iterations": target, "fid": round(stage["quality"]["fid"], 3),
                          "clean": stage["defense_gan_clean"]["accuracy"],
                          "fgsm": stage["defense_gan_fgsm_linf_0.3_transfer"]["accuracy"],
                          "train_seconds": round(seconds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
