"""How good is each MNIST generator? FID, precision/recall, density/coverage and projection error.

For every MNIST generator of the zoo (and any generator files given with ``--extra NAME=PATH``): FID in the
penultimate features of ``mnist-classifier-c`` (an independent classifier of ours, never a downloaded
Inception; figures compare generators measured here, not Inception FIDs of papers), improved precision and
recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) with k = 3, ``--n`` samples
against as many MNIST test images; and the per-pixel MSE of the generator's default projection of the first
``--n-proj`` test images (± SE). For scale: the test set's second half against its first (the floor) and
uniform noise. A class-conditional generator (``mnist-class-vaes``) draws its samples with the test set's
labels and projects each test image onto its own class's range.

    python benchmarks/generator_quality.py [--n 5000] [--n-proj 200] [--extra sn-hinge=PATH.pt]
                                           [--generators NAME ...] [--merge]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from common import provenance

from manifold_defense import data, zoo
from manifold_defense.defended import ProjectionConfig
from manifold_defense.generators.class_conditional import class_groups
from manifold_defense.generators.dcgan import DefenseGANGenerator
from manifold_defense.protocols import ClassConditional
from manifold_defense.quality import generator_quality

GENERATORS = ["mnist-vae20", "mnist-wgan", "mnist-wgan-inv",  # mnist-wgan-inv: mnist-wgan's weights plus its encoder
              "mnist-sngan", "mnist-sngan-inv", "mnist-class-vaes"]


def projection_mse(gen, x: torch.Tensor, batch_size: int = 100, labels: torch.Tensor | None = None) -> dict:
    if isinstance(gen, ClassConditional):  # each image onto its own class's range
        errs = torch.empty(len(x))
        for c, rows in class_groups(labels, gen.num_classes):
            errs[rows] = projection_mse(gen.condition(c), x[rows], batch_size)["errors"]
        cfg = ProjectionConfig.for_generator(gen.condition(0))
    else:
        cfg = ProjectionConfig.for_generator(gen)
        errs = torch.cat([(cfg.project(gen, c).x - c).pow(2).flatten(1).mean(1) for c in x.split(batch_size)])
    return {"mse": float(errs.mean()), "mse_se": float(errs.std() / math.sqrt(len(errs))), "n": len(errs),
            "projection": dataclasses.asdict(cfg), "errors": errs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--n-proj", type=int, default=200)
    p.add_argument("--extra", nargs="*", default=[], help="NAME=PATH of a Defense-GAN-architecture state dict")
    p.add_argument("--generators", nargs="*", choices=GENERATORS, default=GENERATORS, help="zoo generators to measure")
    p.add_argument("--merge", action="store_true", help="keep the other generators' rows of an existing --out")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "generator_quality.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    test_split = data.load("mnist", "test")
    test, test_labels = test_split.images, test_split.labels
    feature_clf = zoo.get("mnist-classifier-c").eval()
    half = min(args.n, len(test) // 2)
    noise = torch.rand(half, *test.shape[1:], generator=torch.Generator().manual_seed(0))
    out = {"n": args.n, "n_proj": args.n_proj, "features": "mnist-classifier-c, penultimate layer", "k": 3,
           "references": {"test_vs_test": generator_quality(None, test[:half], feature_clf, n=half,
                                                            fake=test[half:2 * half]),
                          "uniform_noise": generator_quality(None, test[:half], feature_clf, n=half, fake=noise)},
           "generators": {}}
    if args.merge and Path(args.out).exists():
        out["generators"] = json.loads(Path(args.out).read_text())["generators"]
    models = {name: zoo.get(name).eval() for name in args.generators}
    for spec in args.extra:
        name, _, path = spec.partition("=")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # the batch-normalised variant (gan_training's sn-hinge-bn recipe) carries running statistics
        g = DefenseGANGenerator(latent_dim=128, dim=64, batchnorm=any(k.endswith("running_mean") for k in state))
        g.load_state_dict(state)
        models[name] = g.eval()
    for name, gen in models.items():
        t0 = time.perf_counter()
        if isinstance(gen, ClassConditional):  # samples with the test set's class frequencies
            labels = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(1))[:args.n]]
            fake = torch.cat([gen.sample(c, generator=torch.Generator().manual_seed(i))
                              for i, c in enumerate(labels.split(500))])
            row = generator_quality(None, test, feature_clf, n=args.n, fake=fake)
            row["class_conditional"] = True
        else:
            row = generator_quality(gen, test, feature_clf, n=args.n)
        row["projection"] = projection_mse(gen, test[:args.n_proj], labels=test_labels[:args.n_proj])
        row["projection"].pop("errors")
        row["seconds"] = time.perf_counter() - t0
        out["generators"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k in ("fid", "precision", "recall", "density",
                                                                          "coverage")}),
              json.dumps({"projection_mse": row["projection"]["mse"]}), flush=True)
    out["provenance"] = provenance(args)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
