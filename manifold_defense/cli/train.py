"""``manifold-defense train-generator``, ``train-classifier`` and ``adv-train`` (resumable, torchrun-ready)."""

from __future__ import annotations

import argparse
import json

from manifold_defense.cli.common import (
    add_device,
    check_device,
    check_output_file,
    load_role,
    positive_float,
    positive_int,
    refuse_unused,
)

__all__ = ["add_parsers", "run_generator", "run_classifier", "run_measure", "PRESET_FLAGS"]

#: the flags each adv-train preset uses (argparse dests); any other preset flag given is refused
PRESET_FLAGS = {"standard": set(), "pgd_at": {"epsilon", "norm", "attack_steps"},
                "trades": {"epsilon", "norm", "attack_steps"}, "fast": {"epsilon"},
                "stutz": {"generator", "eta", "attack_steps"},
                "rmd": {"generator", "epsilon", "eta", "norm", "attack_steps", "loss_weight"},
                "combined": {"generator", "epsilon", "eta", "norm", "attack_steps", "loss_weight"}}
#: eta's default depends on the generator: 0.3 (latent ℓ∞, Stutz et al.) on a class-conditional one, else 1.5;
#: epsilon's on the norm: 1.5 in ℓ2, 0.3 in ℓ∞ (Madry et al. 2018's MNIST budget); 'fast' is ℓ∞ only
_PRESET_DEFAULTS = {"norm": "l2", "attack_steps": 10}
_EPSILON_DEFAULTS = {"l2": 1.5, "linf": 0.3}
_FLAG_NAMES = {"generator": "--generator", "epsilon": "--epsilon", "eta": "--eta", "norm": "--norm",
               "attack_steps": "--attack-steps", "loss_weight": "--loss-weight"}


def _common(t: argparse.ArgumentParser) -> None:
    t.add_argument("--dataset", choices=["digits", "mnist"], default="digits", help="training data")
    t.add_argument("--data-path", default=None, help="MNIST file or folder (default: $MANIFOLD_DEFENSE_DATA)")
    t.add_argument("--download", action="store_true", help="allow torchvision to download MNIST")
    t.add_argument("--out", required=True, help="checkpoint path (resumes if it holds an unfinished run)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")
    add_device(t)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the three training commands."""
    from manifold_defense.training import PRESETS

    g = sub.add_parser("train-generator", help="train a VAE or WGAN-GP generator")
    _common(g)
    g.add_argument("--arch", choices=["vae", "wgan"], default="vae", help="vae (CSGM's) or wgan (Defense-GAN's, MNIST)")
    g.add_argument("--epochs", type=positive_int, default=None, help="vae: epochs (default: 100)")
    g.add_argument("--iterations", type=positive_int, default=None,
                   help="wgan: generator iterations, a multiple of 100 above 100 (default: 2000)")
    g.add_argument("--latent-dim", type=positive_int, default=None, help="latent size (default: 20 vae / 128 wgan; "
                                                                         "8 for the digits vae)")
    g.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="vae: hidden widths (default: 500 500 on MNIST, 256 256 on digits)")
    g.add_argument("--batch-size", type=positive_int, default=None, help="default: 100 vae / 50 wgan")
    g.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default: 1e-3 vae / 1e-4 wgan)")
    g.add_argument("--measured", default=None,
                   help="wgan: train on measured (corrupted) data alone, an .npz of `manifold-defense measure` "
                        "(AmbientGAN, Bora et al. 2018); --dataset is then unused")
    g.add_argument("--measure", choices=["ambient", "ignore", "unmeasure"], default=None,
                   help="with --measured: ambient (the critic sees measurements of the samples), ignore (raw samples), "
                        "or unmeasure (invert each measurement, then a plain GAN) (default: ambient)")
    g.set_defaults(run=run_generator)
    m = sub.add_parser("measure", help="measure a dataset once (AmbientGAN's corrupted data): an .npz for "
                                       "train-generator --measured")
    m.add_argument("--dataset", choices=["digits", "mnist"], default="mnist", help="the clean images measured")
    m.add_argument("--data-path", default=None, help="MNIST file or folder (default: $MANIFOLD_DEFENSE_DATA)")
    m.add_argument("--split", choices=["train", "test"], default="train", help="which split")
    m.add_argument("--measurement", required=True,
                   help="block_pixels:p=0.8, blur_noise:sigma=0.1, keep_patch:size=14 or gaussian_projection")
    m.add_argument("--out", required=True, help="the .npz written (measurements, the measurement, known masks)")
    m.add_argument("--seed", type=int, default=0, help="seed of the measurement parameters")
    m.add_argument("--limit", type=positive_int, default=None, help="only the first N images (default: all)")
    m.set_defaults(run=run_measure)
    for name, hlp in [("train-classifier", "train a classifier"),
                      ("adv-train", "adversarial training: Madry PGD, TRADES, fast FGSM, on-manifold, or the Robust "
                                    "Manifold Defense (torchrun-ready)")]:
        t = sub.add_parser(name, help=hlp)
        _common(t)
        t.add_argument("--arch", choices=["a", "b", "c", "d", "digits"], default="digits",
                       help="Defense-GAN classifier A-D (MNIST) or the digits CNN")
        t.add_argument("--epochs", type=positive_int, default=10, help="epochs")
        t.add_argument("--batch-size", type=positive_int, default=128, help="global batch size")
        t.add_argument("--lr", type=positive_float, default=1e-3, help="peak Adam learning rate")
        t.add_argument("--schedule", choices=["cosine", "cyclic", "constant"], default="cosine",
                       help="learning-rate schedule: cosine decay, cyclic (up to --lr at 2/5 of the epochs and down "
                            "to 0, Wong et al. 2020's for --preset fast) or constant")
        t.add_argument("--metrics-log", default=None, help="per-epoch metrics, JSON lines (default: none)")
        if name == "adv-train":
            t.add_argument("--preset", choices=PRESETS, required=True,
                           help="standard, pgd_at (Madry), trades (Zhang et al.), fast (FGSM with a random start, "
                                "Wong et al.; L-inf), stutz (on-manifold latent PGD), rmd (Ilyas et al.), "
                                "combined (pgd_at + stutz)")
            t.add_argument("--generator", default=None, help="zoo name or checkpoint (stutz, rmd, combined; required "
                                                             "there; class-conditional for Stutz et al.'s setting)")
            t.add_argument("--epsilon", type=positive_float, default=None, help="pixel budget (pgd_at, trades, fast, rmd, "
                                                                                "combined; default: 1.5 in L2, 0.3 in "
                                                                                "L-inf)")
            t.add_argument("--eta", type=positive_float, default=None, help="on-manifold budget (stutz, rmd, combined; default: 0.3 "
                                                                              "latent L-inf on a class-conditional "
                                                                              "generator, else 1.5 image L2)")
            t.add_argument("--norm", choices=["l2", "linf"], default=None, help="pixel-space norm (pgd_at, trades, rmd, "
                                                                                "combined; default: l2)")
            t.add_argument("--attack-steps", type=positive_int, default=None,
                           help="attack steps per batch (every adversarial preset; default: 10)")
            t.add_argument("--overfit-guard", choices=["auto", "on", "off"], default="auto",
                           help="APGD-CE on 512 training images after each epoch, rollback on a drop of more than "
                                "0.2 (Wong et al. 2020's guard against catastrophic overfitting); auto: on for fast")
            t.add_argument("--loss-weight", type=positive_float, default=None,
                           help="weight of the second loss term (rmd: overpowered consistency, default 1e-2; "
                                "combined: on-manifold loss, default 0.5)")
        t.set_defaults(run=run_classifier)


def run_generator(args: argparse.Namespace) -> int:
    """Train a generator (every check before the data is loaded)."""
    import torch

    from manifold_defense import data
    from manifold_defense.generators import VAE, DefenseGANGenerator, WGANCritic, train_vae, train_wgan
    from manifold_defense.validation import InputError

    if args.measure is not None and args.measured is None:
        raise InputError("--measure applies to measured data: give --measured FILE")
    if args.arch == "vae":
        refuse_unused(args, set(), {"iterations": "--iterations", "measured": "--measured"}, "--arch vae")
    elif args.measured is not None:
        return _run_measured(args)
    else:
        refuse_unused(args, set(), {"epochs": "--epochs", "hidden": "--hidden"}, "--arch wgan")
        if args.dataset != "mnist":
            raise InputError("the WGAN generator is built for 28x28 images: use --dataset mnist")
        if args.iterations is not None and args.iterations > 100 and args.iterations % 100:
            raise InputError(f"--iterations must be a multiple of 100 above 100 (checkpoints every 100), got "
                             f"{args.iterations}")
    device = check_device(args.device)
    out = check_output_file(args.out)
    train = data.load(args.dataset, "train", path=args.data_path, download=args.download)
    test = data.load(args.dataset, "test", path=args.data_path, download=args.download)
    meta = {"dataset": args.dataset, "kind": "generator"}
    torch.manual_seed(args.seed)  # the initial weights, too, follow --seed
    if args.arch == "vae":
        mnist = args.dataset == "mnist"
        model = VAE(data.image_shape(args.dataset), args.latent_dim or (20 if mnist else 8),
                    args.hidden or ([500, 500] if mnist else [256, 256])).to(device)
        hist = train_vae(model, train.images, x_test=test.images, epochs=args.epochs or 100,
                         batch_size=args.batch_size or 100, lr=args.lr or 1e-3, seed=args.seed, path=out, metadata=meta)
    else:
        iterations = args.iterations or 2000
        model = DefenseGANGenerator(latent_dim=args.latent_dim or 128).to(device)
        hist = train_wgan(model, WGANCritic().to(device), train.images, x_test=test.images, iterations=iterations,
                          iterations_per_epoch=min(100, iterations), batch_size=args.batch_size or 50,
                          lr=args.lr or 1e-4, seed=args.seed, path=out, metadata=meta)
    print(json.dumps(hist[-1]))
    print(f"saved {out}")
    return 0


def _run_measured(args: argparse.Namespace) -> int:
    """WGAN-GP on measured data alone: AmbientGAN, or its 'ignore' / 'unmeasure' baselines (Bora et al. 2018)."""
    import torch

    from manifold_defense.ambient import load_measured
    from manifold_defense.generators import DefenseGANGenerator, WGANCritic, train_wgan
    from manifold_defense.validation import InputError

    if args.iterations is not None and args.iterations > 100 and args.iterations % 100:
        raise InputError(f"--iterations must be a multiple of 100 above 100 (checkpoints every 100), got "
                         f"{args.iterations}")
    device = check_device(args.device)
    out = check_output_file(args.out)
    y, measurement, params = load_measured(args.measured)
    if tuple(measurement.image_shape) != (1, 28, 28):
        raise InputError(f"the WGAN generator makes 1x28x28 images; {args.measured} measured "
                         f"{'x'.join(map(str, measurement.image_shape))} ones")
    mode = args.measure or "ambient"
    if mode == "unmeasure":
        missing = [k for k in measurement.known_params if k not in params]
        if missing:
            raise InputError(f"--measure unmeasure needs the {' and '.join(missing)} of every image; "
                             f"{args.measured} does not hold it")
        print(f"unmeasuring {len(y)} measurements ({measurement.name}) ...")
        x, kwargs = measurement.unmeasure(y, params), {}
    else:
        x, kwargs = y, {"measurement": measurement, "measure": mode, "real_measured": True}
    meta = {"dataset": f"measured:{args.measured}", "kind": "generator", "measured": measurement.config(),
            "measure": mode}
    torch.manual_seed(args.seed)
    iterations = args.iterations or 2000
    model = DefenseGANGenerator(latent_dim=args.latent_dim or 128).to(device)
    critic = WGANCritic(channels=measurement.output_shape[0] if mode == "ambient" else 1).to(device)
    hist = train_wgan(model, critic, x, iterations=iterations, iterations_per_epoch=min(100, iterations),
                      batch_size=args.batch_size or 50, lr=args.lr or 1e-4, seed=args.seed, path=out, metadata=meta,
                      **kwargs)
    print(json.dumps(hist[-1]))
    print(f"saved {out}")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    """Measure a dataset once with seeded parameters and save it as a user's corrupted data."""
    from manifold_defense import data
    from manifold_defense.ambient import measure_dataset, parse_measurement, save_measured

    out = check_output_file(args.out)
    measurement = parse_measurement(args.measurement, data.image_shape(args.dataset))
    images = data.load(args.dataset, args.split, path=args.data_path, limit=args.limit).images
    y, params = measure_dataset(measurement, images, seed=args.seed)
    save_measured(out, y, measurement, params)
    print(f"saved {len(y)} {measurement.name} measurements of {args.dataset} {args.split} -> {out}")
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    """Train a classifier, standard or adversarial, in one process or under torchrun."""
    import torch

    from manifold_defense import data
    from manifold_defense.classifiers import DefenseGANClassifier, DigitsCNN
    from manifold_defense.distributed import init_from_environment, shutdown
    from manifold_defense.training import objective_preset, train_classifier
    from manifold_defense.validation import InputError, check_compatible

    preset = getattr(args, "preset", None)
    if preset is not None:
        refuse_unused(args, PRESET_FLAGS[preset], _FLAG_NAMES, f"--preset {preset}")
        if "generator" in PRESET_FLAGS[preset] and args.generator is None:
            raise InputError(f"--preset {preset} needs --generator (a zoo name or checkpoint)")
        if args.overfit_guard == "on" and "epsilon" not in PRESET_FLAGS[preset]:
            raise InputError(f"--overfit-guard on needs a pixel adversary (--epsilon); --preset {preset} has none")
        if preset == "fast":
            args.norm = "linf"
        for k, v in _PRESET_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.epsilon is None:
            args.epsilon = _EPSILON_DEFAULTS[args.norm]
    if (args.arch == "digits") != (args.dataset == "digits"):
        raise InputError(f"--arch {args.arch} does not fit --dataset {args.dataset} (digits CNN for digits, A-D for "
                         "MNIST)")
    device = check_device(args.device)
    out = check_output_file(args.out)
    log = check_output_file(args.metrics_log, "--metrics-log") if args.metrics_log else None
    world, rank, local_device = init_from_environment(str(device))  # torchrun sets WORLD_SIZE/RANK
    device = local_device or device
    try:
        train = data.load(args.dataset, "train", path=args.data_path, download=args.download)
        test = data.load(args.dataset, "test", path=args.data_path, download=args.download)
        shape = data.image_shape(args.dataset)
        torch.manual_seed(args.seed)  # the initial weights, too, follow --seed
        model = (DigitsCNN(shape) if args.arch == "digits" else DefenseGANClassifier(args.arch.upper(), shape)).to(device)
        objective, metadata = None, {"dataset": args.dataset, "kind": "classifier"}
        if preset is not None:
            gen = load_role(args.generator, "generator", device).eval() if args.generator else None
            if gen is not None:
                check_compatible(gen, model)
                for p in gen.parameters():
                    p.requires_grad_(False)
            objective = objective_preset(preset, gen, epsilon=args.epsilon, eta=args.eta, norm=args.norm,
                                         steps=args.attack_steps, weight=args.loss_weight)
            metadata.update({"preset": preset, "generator": args.generator})
        hist = train_classifier(model, train.images, train.labels, test=(test.images, test.labels),
                                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                                seed=args.seed, path=out, metadata=metadata, objective=objective, log_path=log,
                                progress=rank == 0,
                                overfit_guard={"auto": None, "on": True, "off": False}[getattr(args, "overfit_guard",
                                                                                               "auto")])
        if rank == 0:
            print(json.dumps(hist[-1]))
            print(f"saved {out}" + (f" (trained on {world} processes)" if world > 1 else ""))
    finally:
        shutdown()
    return 0
