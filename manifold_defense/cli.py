"""The ``manifold-defense`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, or auto (default: cpu)")


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from manifold_defense import data, zoo
    from manifold_defense.classifiers import accuracy
    from manifold_defense.viz import save_image_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("manifold-defense demo: 8x8 digits (scikit-learn's bundled copy)")
    print(f"models are trained on first use and cached under {data.cache_dir() / 'zoo'}")
    vae = zoo.get("digits-vae", args.device, progress=not args.quiet)
    clf = zoo.get("digits-classifier", args.device, progress=not args.quiet)
    test = data.load("digits", "test")
    x, y = test.images.to(vae.blocks[0][0].weight.device), test.labels
    clean_acc = accuracy(clf, x, y)
    with torch.inference_mode():
        rec = vae(vae.encode(x))
        rec_mse = float((rec - x).pow(2).mean())
        rec_acc = float((clf(rec).argmax(1).cpu() == y).float().mean())
        samples = vae(vae.sample_latent(16, torch.Generator(device=x.device).manual_seed(0)))
    grid = save_image_grid(
        [x[:16], rec[:16], samples], out / "digits_vae.png",
        row_labels=["test", "G(E(x))", "samples"], title="digits-vae: test images, reconstructions, samples",
    )
    n = len(y)
    se = (clean_acc * (1 - clean_acc) / n) ** 0.5
    print(f"\n  digits-vae         test reconstruction MSE per pixel: {rec_mse:.4f}")
    print(f"  digits-classifier  test accuracy: {clean_acc:.2%} ± {se:.2%} (n = {n})")
    print(f"  classifier on G(E(x)) (what a projection defense feeds it): {rec_acc:.2%}")
    robustness = _demo_robustness(clf, vae, x[: args.n], y[: args.n], out, progress=not args.quiet)
    summary = {
        "dataset": "digits", "n_test": len(y),
        "generator": {"name": "digits-vae", "test_recon_mse_per_pixel": rec_mse},
        "classifier": {"name": "digits-classifier", "test_accuracy": clean_acc,
                       "accuracy_on_reconstructions": rec_acc},
        "robustness": robustness,
        "seconds": time.perf_counter() - t0,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\n  wrote {grid}, {out / 'demo.json'} and the reports in {out}  ({summary['seconds']:.1f} s)")
    return 0


def _demo_robustness(clf, vae, x, y, out: Path, progress: bool) -> dict:
    """Undefended vs defended; non-adaptive (transfer) vs adaptive (BPDA) vs on-manifold attacks."""
    import torch

    from manifold_defense.attacks import BPDA, FGSM, LatentPGD, LatentReparameterization, LinfPGD, TransferAttack
    from manifold_defense.defended import DefendedModel
    from manifold_defense.eval import AttackSpec, evaluate, sanity_checks, write_report
    from manifold_defense.viz import save_image_grid

    defended = DefendedModel(clf, vae).eval()
    eps = [0.1, 0.2, 0.3]
    common = [AttackSpec("fgsm_transfer", TransferAttack(clf, FGSM()), eps, "linf", iterative=False),
              AttackSpec("pgd_linf_bpda", BPDA(steps=20), eps, "linf"),
              AttackSpec("pgd_l2_bpda", BPDA(norm="l2", steps=20), [1.0], "l2"),
              AttackSpec("latent_reparam_l2", LatentReparameterization(vae, steps=60, restarts=2), [1.0], "l2"),
              AttackSpec("on_manifold", LatentPGD(vae, steps=20, latent_stepsize=0.25), [1.0], "on_manifold")]
    result = {}
    for name, model in (("undefended", clf), ("defended", defended)):
        print(f"\n  attacking the {name} classifier ({len(y)} test images) ...")
        ev = evaluate(model, x, y, common, batch_size=50, out_dir=out / name, progress=progress)
        sanity_checks(ev, model, x, y)
        write_report(ev, out / name, title=f"digits, {name}")
        result[name] = ev.to_dict()
    print("\n  accuracy (n = %d)            undefended   defended" % len(y))
    rows = [("clean", None)] + [(f"{s.name} ε={e:g}", (s.name, float(e))) for s in common for e in s.epsilons]
    for label, key in rows:
        vals = []
        for name in ("undefended", "defended"):
            d = result[name]
            vals.append(d["clean"]["accuracy"] if key is None else d["robust"][f"{key[0]}@{key[1]:g}"]["accuracy"])
        print(f"  {label:28s} {vals[0]:9.1%} {vals[1]:10.1%}")
    for name in ("undefended", "defended"):
        failed = [k for k, ok in result[name]["sanity"].items() if not ok]
        print(f"  sanity checks, {name}: {'all pass' if not failed else 'FAILED: ' + ', '.join(failed)}")
    print("  (fgsm_transfer is the non-adaptive protocol of the Defense-GAN paper; pgd_linf_bpda attacks the\n"
          "   projection adaptively; latent_reparam_l2 searches the range within ε of x (Athalye et al.);\n"
          "   on_manifold stays on the generator's range, ‖G(z') − G(ẑ)‖₂ ≤ η.)")
    adv = LinfPGD(steps=20)(defended, x[:12], y[:12], epsilon=0.2).adversarial
    with torch.no_grad():
        save_image_grid([x[:12], defended.project(x[:12]).x, adv, defended.project(adv).x], out / "defense_grid.png",
                        row_labels=["clean", "projected", "BPDA adv ε=.2", "adv projected"],
                        title="digits: what the defense sees")
    return result


def _load_model(spec: str, device: str):
    """A zoo name or a checkpoint path → model."""
    from manifold_defense import models, zoo
    from manifold_defense.validation import InputError

    if Path(spec).is_file():
        return models.load_model(spec, device)
    if spec in zoo.names():
        return zoo.get(spec, device)
    raise InputError(f"{spec!r} is neither a checkpoint file nor a zoo model ({', '.join(zoo.names())})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from manifold_defense import data
    from manifold_defense.defended import DefendedModel, ProjectionConfig
    from manifold_defense.eval import AttackBudget, build_attack, evaluate, parse_attack, sanity_checks, write_report
    from manifold_defense.validation import InputError

    t0 = time.perf_counter()
    clf = _load_model(args.classifier, args.device).eval()
    dataset = args.dataset or ("digits" if tuple(clf.input_shape)[-1] == 8 else "mnist")
    test = data.load(dataset, "test", path=args.data_path)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    x, y = test.images[: args.n], test.labels[: args.n]
    gen = _load_model(args.generator, args.device).eval() if args.generator else None
    if args.attack is None:
        args.attack = ["fgsm_transfer:0.3", "pgd_linf:0.3", "pgd_l2:3.8"]
        if gen is not None:
            args.attack += ["latent_reparam_l2:3.8", "on_manifold:1.5"]
    if gen is None and (args.projection != "none" or any(a.startswith(("on_manifold", "overpowered", "latent"))
                                                         for a in args.attack)):
        raise InputError("this evaluation needs --generator (a zoo name or checkpoint)")
    latent = getattr(gen, "latent_dim", 128)
    projections = {"default": ProjectionConfig.for_generator(gen),
                   "defense_gan": ProjectionConfig.defense_gan(latent_dim=latent)}
    if args.projection == "none":
        model = clf
    else:
        cfg = projections[args.projection]
        if args.dead_zone:
            cfg = dataclasses.replace(cfg, dead_zone=args.dead_zone)
        model = DefendedModel(clf, gen, cfg).eval()
    surrogate = projections[args.surrogate] if args.surrogate else None
    budget = AttackBudget.quick() if args.quick else AttackBudget()
    specs = []
    for text in args.attack:
        name, eps = parse_attack(text)
        specs.append(build_attack(name, eps, classifier=clf, generator=gen, surrogate=surrogate, budget=budget))
    out = Path(args.out)
    print(f"evaluate: {args.classifier} behind projection '{args.projection}' on {len(x)} {dataset} test images; "
          f"records in {out / 'records.jsonl'} (a rerun resumes)")
    ev = evaluate(model, x, y, specs, batch_size=args.batch_size, out_dir=out, start=args.start, stop=args.stop,
                  progress=not args.quiet)
    sanity_checks(ev, model, x, y, decision_subset=args.decision_subset)
    paths = write_report(ev, out, title=f"{args.classifier} / {args.projection} projection")
    print((out / "report.md").read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from manifold_defense import zoo

    if args.zoo_cmd == "list":
        rows = zoo.status()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'name':22} {'state':18} {'train s':>8}  quality")
        for r in rows:
            q = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("quality", {}).items())
            ts = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
            print(f"{r['name']:22} {r['state']:18} {ts:>8}  {q}")
        return 0
    if args.zoo_cmd == "path":
        print(zoo.path(args.name))
        return 0
    if args.zoo_cmd == "show":
        return _zoo_show(args)
    names = zoo.names() if args.all else args.names
    if not names:
        print("zoo build: give model names or --all", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        quality = zoo.build(name, device=args.device, force=args.force, progress=not args.quiet)
        print(f"{name}: {json.dumps(quality)} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _zoo_show(args: argparse.Namespace) -> int:
    """Sample grid of a zoo generator (and reconstructions when it has an encoder)."""
    import torch

    from manifold_defense import data, zoo
    from manifold_defense.protocols import Encoded
    from manifold_defense.viz import save_image_grid

    entry = zoo.ENTRIES.get(args.name)
    model = zoo.get(args.name, args.device, train=False)
    if entry is None or entry.kind != "generator":
        print(f"{args.name} is not a generator; `zoo list` shows classifier accuracies", file=sys.stderr)
        return 2
    out = Path(args.out or f"{args.name}.png")
    with torch.inference_mode():
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
        rows = [model(model.sample_latent(args.cols, g)) for _ in range(args.rows)]
        labels = ["samples"] * args.rows
        if isinstance(model, Encoded):
            x = data.load(entry.dataset, "test", limit=args.cols).images.to(next(model.parameters()).device)
            rows += [x, model(model.encode(x))]
            labels += ["test", "G(E(x))"]
    save_image_grid(rows, out, row_labels=labels, title=f"{args.name}: {entry.description}")
    print(f"wrote {out}")
    return 0


def _load_split(dataset: str, split: str, data_path: str | None, download: bool):
    from manifold_defense import data

    return data.load(dataset, split, path=data_path, download=download)


def _cmd_train_generator(args: argparse.Namespace) -> int:
    import torch

    from manifold_defense import data
    from manifold_defense.generators import VAE, DefenseGANGenerator, WGANCritic, train_vae, train_wgan
    from manifold_defense.utils import resolve_device

    device = resolve_device(args.device)
    train = _load_split(args.dataset, "train", args.data_path, args.download)
    test = _load_split(args.dataset, "test", args.data_path, args.download)
    shape = data.image_shape(args.dataset)
    meta = {"dataset": args.dataset, "kind": "generator"}
    torch.manual_seed(args.seed)  # the initial weights, too, follow --seed
    if args.arch == "vae":
        hidden = args.hidden or ([500, 500] if args.dataset == "mnist" else [256, 256])
        latent = args.latent_dim or (20 if args.dataset == "mnist" else 8)
        model = VAE(shape, latent, hidden).to(device)
        hist = train_vae(model, train.images, x_test=test.images, epochs=args.epochs or 100, batch_size=args.batch_size
                         or 100, lr=args.lr or 1e-3, seed=args.seed, path=args.out, metadata=meta)
    else:
        if args.dataset != "mnist":
            raise SystemExit("the WGAN generator is built for 28x28 images: use --dataset mnist")
        model = DefenseGANGenerator(latent_dim=args.latent_dim or 128).to(device)
        critic = WGANCritic().to(device)
        hist = train_wgan(model, critic, train.images, x_test=test.images, iterations=args.iterations,
                          iterations_per_epoch=min(100, args.iterations), batch_size=args.batch_size or 50,
                          lr=args.lr or 1e-4, seed=args.seed, path=args.out, metadata=meta)
    print(json.dumps(hist[-1]))
    print(f"saved {args.out}")
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    import torch

    from manifold_defense import data
    from manifold_defense.classifiers import DefenseGANClassifier, DigitsCNN
    from manifold_defense.training import train_classifier
    from manifold_defense.utils import resolve_device

    from manifold_defense.distributed import init_from_environment, shutdown

    world, rank, local_device = init_from_environment(args.device)  # torchrun sets WORLD_SIZE/RANK
    device = local_device or resolve_device(args.device)
    try:
        train = _load_split(args.dataset, "train", args.data_path, args.download)
        test = _load_split(args.dataset, "test", args.data_path, args.download)
        shape = data.image_shape(args.dataset)
        torch.manual_seed(args.seed)  # the initial weights, too, follow --seed
        model = (DigitsCNN(shape) if args.arch == "digits" else DefenseGANClassifier(args.arch.upper(), shape)).to(device)
        objective, metadata = None, {"dataset": args.dataset, "kind": "classifier"}
        if getattr(args, "preset", None):
            from manifold_defense.training import objective_preset
            from manifold_defense.validation import check_compatible

            gen = _load_model(args.generator, str(device)).eval() if args.generator else None
            if gen is not None:
                check_compatible(gen, model)
                for p in gen.parameters():
                    p.requires_grad_(False)
            objective = objective_preset(args.preset, gen, epsilon=args.epsilon, eta=args.eta, norm=args.norm)
            metadata.update({"preset": args.preset, "generator": args.generator})
        hist = train_classifier(model, train.images, train.labels, test=(test.images, test.labels),
                                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                path=args.out, metadata=metadata, objective=objective,
                                log_path=getattr(args, "metrics_log", None), progress=rank == 0)
        if rank == 0:
            print(json.dumps(hist[-1]))
            print(f"saved {args.out}" + (f" (trained on {world} processes)" if world > 1 else ""))
    finally:
        shutdown()
    return 0


def _measurement_picture(op, y):
    """Something to look at for measurements: y itself when image-shaped, else the back-projection Aᵀy."""
    import torch.nn.functional as F

    if y.dim() == 4:
        return F.interpolate(y, size=op.in_shape[1:], mode="nearest") if y.shape[2:] != op.in_shape[1:] else y
    back = op.adjoint(y)
    lo = back.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = back.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (back - lo) / (hi - lo).clamp_min(1e-8)


def _cmd_recover(args: argparse.Namespace) -> int:
    import math


    from manifold_defense import data, zoo
    from manifold_defense.baselines import lasso
    from manifold_defense.inversion import invert
    from manifold_defense.operators import GaussianNoise, make_operator
    from manifold_defense.utils import resolve_device
    from manifold_defense.viz import save_image_grid

    device = resolve_device(args.device)
    x = data.load(args.dataset, "test", path=args.data_path, limit=args.n).images.to(device)
    extra = {}
    if args.operator == "superres":
        extra["factor"] = args.factor
    op = make_operator(args.operator, x.shape[1:], m=args.m, seed=args.seed, **extra).to(device)
    y = op(x)
    if args.noise > 0:
        y = GaussianNoise.per_measurement(args.noise, op.m, seed=args.seed + 1)(y)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    evals = 0.0
    if args.method.startswith("lasso"):
        basis = {"lasso": "pixel", "lasso_dct": "dct", "lasso_wavelet": "wavelet"}[args.method]
        x_hat = lasso(op, y, alpha=args.alpha, basis=basis)
    elif args.method == "dip":
        from manifold_defense.generators import DeepImagePrior

        # An untrained network per image; with noisy measurements, stop at the noise energy ‖η‖² ≈ σ²
        # (the discrepancy principle) before DIP fits the noise.
        net = DeepImagePrior(x.shape[1:], channels=args.dip_channels, seed=args.seed).to(device)
        res = invert(net, y, op, method="dip", loss="sum", steps=args.steps, lr=args.lr or 0.01,
                     restarts=args.restarts or 1, tv_weight=args.tv_weight, seed=args.seed,
                     stop_at=args.noise**2 if args.noise > 0 else None, progress=not args.quiet)
        x_hat, evals = res.x, res.evals_per_sample
    else:
        gen_name = args.generator or ("mnist-vae20" if args.dataset == "mnist" else "digits-vae")
        gen = zoo.get(gen_name, device)
        kw = {"restarts": args.restarts or 5, "steps": args.steps, "lr": args.lr or 0.05,
              "prior_weight": args.prior_weight}
        if args.method == "ilo":
            res = invert(gen, y, op, method="ilo", csgm_kwargs=kw, seed=args.seed)
        else:
            res = invert(gen, y, op, method="csgm", seed=args.seed, **kw)
        x_hat, evals = res.x, res.evals_per_sample
    seconds = time.perf_counter() - t0
    err = (x_hat - x).pow(2).flatten(1).mean(1).cpu()
    n = len(err)
    metrics = {
        "dataset": args.dataset, "operator": args.operator, "m": op.m, "method": args.method, "n_images": n,
        "noise_sigma": args.noise, "per_pixel_mse": float(err.mean()),
        "stderr": float(err.std() / math.sqrt(n)) if n > 1 else None, "per_image_mse": err.tolist(),
        "seconds_per_image": seconds / n, "generator_evals_per_image": evals,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    grid = save_image_grid([x[:16], _measurement_picture(op, y)[:16], x_hat[:16]], out / "recovery.png",
                           row_labels=["truth", "measured", args.method],
                           title=f"{args.operator}, m = {op.m}, {args.method}: per-pixel MSE {err.mean():.4f}")
    print(f"{args.method} on {args.operator} (m = {op.m}), {n} {args.dataset} images: per-pixel MSE "
          f"{err.mean():.5f} ± {1.96 * (metrics['stderr'] or 0):.5f}, {seconds / n:.3f} s/image")
    print(f"wrote {grid} and {out / 'metrics.json'}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from manifold_defense import data
    from manifold_defense.guided import guided_generate, guided_metrics
    from manifold_defense.utils import resolve_device
    from manifold_defense.validation import InputError
    from manifold_defense.viz import save_animation, save_image_grid

    device = resolve_device(args.device)
    mnist = args.dataset == "mnist"
    gen = _load_model(args.generator or ("mnist-vae20" if mnist else "digits-vae"), device)
    clf = _load_model(args.classifier or ("mnist-robust-l2" if mnist else "digits-robust-l2"), device)
    judge = _load_model(args.judge or ("mnist-classifier-b" if mnist else "digits-classifier"), device)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    test = data.load(args.dataset, "test", path=args.data_path, limit=args.n)
    x, labels = test.images.to(device), test.labels.to(device)
    targets = torch.tensor(args.targets if args.targets else range(10), device=device)
    k = len(targets)
    starts = x.repeat_interleave(k, 0)  # pair (i, j): start image i towards target class j
    tgt = targets.repeat(len(x))
    res = guided_generate(gen, clf, tgt, starts, method=args.method, steps=args.steps, radii=args.radii,
                          epsilon=args.epsilon, reference_weight=args.reference_weight, frames=args.frames,
                          seed=args.seed, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    moved = tgt != labels.repeat_interleave(k)  # pairs whose target differs from the start's class
    metrics = guided_metrics(res, judge, gen)
    success = float(torch.tensor(metrics["per_pair"]["judge_correct"])[moved.cpu()].mean()) if moved.any() else None
    summary = {"method": args.method, "steps": args.steps, "n_starts": len(x), "targets": targets.tolist(),
               "judge_success_changed_class": success, **{k2: v for k2, v in metrics.items() if k2 != "per_pair"},
               "per_pair": metrics["per_pair"]}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    rows = [torch.cat([x[i:i + 1], res.images[i * k:(i + 1) * k]]) for i in range(len(x))]
    rate = float("nan") if success is None else success
    grid = save_image_grid(rows, out / "grid.png", col_labels=["start"] + [f"-> {int(t)}" for t in targets],
                           title=f"{args.method}, {args.steps} steps: judge success {rate:.0%} (pairs that change class)")
    print(f"{args.method}: {len(tgt)} pairs, judge success {rate:.3f} "
          f"on those that change class, L2 to start {metrics['l2_to_start']:.3f}, range residual "
          f"{metrics['range_residual']:.5f}")
    print(f"wrote {grid} and {out / 'metrics.json'}")
    if args.frames > 0:
        gif = save_animation(res.frames, out / "morph.gif", columns=k)
        print(f"wrote {gif} ({res.frames.shape[0]} frames)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from manifold_defense._version import __version__

    p = argparse.ArgumentParser(prog="manifold-defense", description=__doc__)
    p.add_argument("--version", action="version", version=f"manifold-defense {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train (or load) the digits models and show their quality")
    d.add_argument("--out", default="manifold-defense-demo", help="output folder for PNGs and JSON")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--n", type=int, default=100, help="test images attacked (default 100)")
    _device_arg(d)
    d.set_defaults(fn=_cmd_demo)

    from manifold_defense.eval.suite import ATTACKS

    e = sub.add_parser("evaluate", help="robustness evaluation: attacks, epsilons, sanity checks, reports",
                       description="Attacks: " + "; ".join(f"{k} ({v[0]}, default eps {','.join(map(str, v[1]))})"
                                                         for k, v in ATTACKS.items()))
    e.add_argument("--classifier", required=True, help="zoo name or checkpoint path")
    e.add_argument("--generator", default=None, help="zoo name or checkpoint path (needed for a defense)")
    e.add_argument("--projection", choices=["default", "defense_gan", "none"], default="default",
                   help="the defense's projection; 'none' evaluates the undefended classifier")
    e.add_argument("--dead-zone", type=float, default=0.0, help="dead-zone width of the projection loss")
    e.add_argument("--surrogate", choices=["default", "defense_gan"], default=None,
                   help="projection adaptive attacks craft on (default: the defense's own)")
    e.add_argument("--attack", action="append", default=None, metavar="NAME[:EPS,...]",
                   help="repeatable, e.g. --attack pgd_linf:0.1,0.3 --attack latent_reparam_l2:3.8")
    e.add_argument("--n", type=int, default=100, help="first N test images")
    e.add_argument("--start", type=int, default=0, help="shard: first index")
    e.add_argument("--stop", type=int, default=None, help="shard: one past the last index")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--dataset", choices=["digits", "mnist"], default=None, help="default: from the classifier")
    e.add_argument("--data-path", default=None)
    e.add_argument("--quick", action="store_true", help="small attack budgets (smoke runs)")
    e.add_argument("--decision-subset", type=int, default=16, help="samples for the HopSkipJump sanity check")
    e.add_argument("--out", default="manifold-defense-eval")
    e.add_argument("--quiet", action="store_true")
    _device_arg(e)
    e.set_defaults(fn=_cmd_evaluate)

    z = sub.add_parser("zoo", help="list or build the cached model zoo")
    zs = z.add_subparsers(dest="zoo_cmd", required=True)
    zl = zs.add_parser("list", help="models, whether built, training time and quality")
    zl.add_argument("--json", action="store_true")
    zb = zs.add_parser("build", help="train models into the cache (resumes an interrupted build)")
    zb.add_argument("names", nargs="*")
    zb.add_argument("--all", action="store_true")
    zb.add_argument("--force", action="store_true", help="retrain even if cached")
    zb.add_argument("--quiet", action="store_true")
    _device_arg(zb)
    zp = zs.add_parser("path", help="cache file of a model")
    zp.add_argument("name")
    zsh = zs.add_parser("show", help="PNG grid of samples from a built zoo generator")
    zsh.add_argument("name")
    zsh.add_argument("--out", default=None, help="PNG path (default NAME.png)")
    zsh.add_argument("--rows", type=int, default=4)
    zsh.add_argument("--cols", type=int, default=12)
    zsh.add_argument("--seed", type=int, default=0)
    _device_arg(zsh)
    z.set_defaults(fn=_cmd_zoo)

    r = sub.add_parser("recover", help="compressed sensing / inverse problems: recover images from measurements")
    r.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    r.add_argument("--data-path", default=None)
    r.add_argument("--operator", default="gaussian",
                   choices=["gaussian", "circulant", "inpainting", "superres", "blur", "fourier", "identity"])
    r.add_argument("--m", type=int, default=None, help="measurements (gaussian, circulant), observed pixels "
                   "(inpainting) or sampled frequencies (fourier)")
    r.add_argument("--factor", type=int, default=2, help="super-resolution factor")
    r.add_argument("--method", default="csgm", choices=["csgm", "ilo", "dip", "lasso", "lasso_dct", "lasso_wavelet"],
                   help="dip: Deep Image Prior, an untrained network fitted per image (no generator needed)")
    r.add_argument("--generator", default=None, help="zoo name (default: the dataset's VAE)")
    r.add_argument("--n", type=int, default=16, help="number of test images")
    r.add_argument("--noise", type=float, default=0.0, help="total noise norm σ (per entry σ/√m)")
    r.add_argument("--restarts", type=int, default=None, help="default 5 (csgm, ilo), 1 (dip)")
    r.add_argument("--steps", type=int, default=500)
    r.add_argument("--lr", type=float, default=None, help="default 0.05 (csgm, ilo), 0.01 (dip)")
    r.add_argument("--prior-weight", type=float, default=0.0)
    r.add_argument("--tv-weight", type=float, default=0.0, help="dip: total-variation weight")
    r.add_argument("--dip-channels", type=int, default=32, help="dip: channels of the untrained network")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--alpha", type=float, default=0.1, help="Lasso penalty")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="manifold-defense-recover")
    _device_arg(r)
    r.set_defaults(fn=_cmd_recover)

    g = sub.add_parser("generate", help="classifier-guided generation (ILO): steer start images to target classes",
                       description="Rows: start test images; columns: target classes. Writes grid.png, "
                                   "metrics.json and (with --frames) morph.gif.")
    g.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    g.add_argument("--data-path", default=None)
    g.add_argument("--generator", default=None, help="zoo name or checkpoint (default: the dataset's VAE)")
    g.add_argument("--classifier", default=None,
                   help="guiding classifier, zoo name or checkpoint (default: the dataset's robust-l2 model)")
    g.add_argument("--judge", default=None, help="independent classifier judging success (default: a standard one)")
    g.add_argument("--method", choices=["ilo", "latent", "pixel"], default="ilo")
    g.add_argument("--n", type=int, default=6, help="start images (default 6)")
    g.add_argument("--targets", type=int, nargs="+", default=None, help="target classes (default 0-9)")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--radii", type=float, default=0.3, help="ilo: relative l1 radius per intermediate layer")
    g.add_argument("--epsilon", type=float, default=None,
                   help="pixel: l2 radius around the start (default 0.3 sqrt(pixels): 8.4 on MNIST)")
    g.add_argument("--reference-weight", type=float, default=0.0,
                   help="weight of ||x - start||^2/n (morphing: stay near the start)")
    g.add_argument("--frames", type=int, default=0, help="snapshots along the way, written as morph.gif")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--out", default="manifold-defense-generate")
    _device_arg(g)
    g.set_defaults(fn=_cmd_generate)

    for name, fn, hlp in [("train-generator", _cmd_train_generator, "train a VAE or WGAN-GP generator"),
                          ("train-classifier", _cmd_train_classifier, "train a classifier"),
                          ("adv-train", _cmd_train_classifier,
                           "adversarial training: Madry PGD, on-manifold, or the Robust Manifold Defense (torchrun-ready)")]:
        t = sub.add_parser(name, help=hlp)
        t.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
        t.add_argument("--data-path", default=None, help="MNIST file or folder (default: $MANIFOLD_DEFENSE_DATA)")
        t.add_argument("--download", action="store_true", help="allow torchvision to download MNIST")
        t.add_argument("--out", required=True, help="checkpoint path (resumes if it holds an unfinished run)")
        t.add_argument("--seed", type=int, default=0)
        _device_arg(t)
        if name == "train-generator":
            t.add_argument("--arch", choices=["vae", "wgan"], default="vae")
            t.add_argument("--epochs", type=int, default=None, help="VAE epochs (default 100)")
            t.add_argument("--iterations", type=int, default=2000, help="WGAN generator iterations")
            t.add_argument("--latent-dim", type=int, default=None)
            t.add_argument("--hidden", type=int, nargs="+", default=None, help="VAE hidden widths")
            t.add_argument("--batch-size", type=int, default=None)
            t.add_argument("--lr", type=float, default=None)
        else:
            t.add_argument("--arch", choices=["a", "b", "c", "d", "digits"], default="digits")
            t.add_argument("--epochs", type=int, default=10)
            t.add_argument("--batch-size", type=int, default=128)
            t.add_argument("--lr", type=float, default=1e-3)
        if name == "adv-train":
            from manifold_defense.training import PRESETS

            t.add_argument("--preset", choices=PRESETS, required=True,
                           help="standard, pgd_at (Madry), stutz (on-manifold latent PGD), rmd (Ilyas et al.)")
            t.add_argument("--generator", default=None, help="zoo name or checkpoint (stutz, rmd)")
            t.add_argument("--epsilon", type=float, default=1.5, help="pixel-space budget (pgd_at, rmd)")
            t.add_argument("--eta", type=float, default=1.5, help="on-manifold budget (stutz, rmd)")
            t.add_argument("--norm", choices=["l2", "linf"], default="l2")
            t.add_argument("--metrics-log", default=None, help="per-epoch metrics, JSON lines")
        t.set_defaults(fn=fn)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from manifold_defense.checkpoint import CheckpointError
    from manifold_defense.data import DataNotFoundError
    from manifold_defense.validation import InputError

    try:
        return int(args.fn(args) or 0)
    except (InputError, CheckpointError, DataNotFoundError) as exc:
        print(f"manifold-defense: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
