"""How well do the attacks' gradients agree with the defended model's true loss, and at what scale?

Classifier A behind each generator's default projection, on the first N MNIST test images: the agreement
(:func:`manifold_defense.eval.gradient_agreement`, Carlini et al. 2019's check that gradients are informative)
of BPDA's gradient (Athalye et al. 2018) and the implicit one with central finite differences of the defended
model's cross-entropy, at several finite-difference steps h (ℓ2 length of the step; the sanity check
``gradients_informative`` uses h = 0.05 on 8 images). A loss that is rough at small scales gives noise at
small h even when the gradient points the right way at the scale an attack moves (ε = 0.3 in ℓ∞ is ℓ2 ≈ 8).

    python benchmarks/gradient_agreement.py [--generators mnist-vae20 mnist-sngan-inv] [--n 16]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from common import provenance

from manifold_defense import data, zoo
from manifold_defense.attacks.adaptive import crafting_model
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import gradient_agreement

MODES = ("bpda", "implicit")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", nargs="+", default=["mnist-vae20", "mnist-sngan-inv"])
    p.add_argument("--steps", nargs="+", type=float, default=[0.05, 0.2, 0.5, 1.0], help="finite-difference h")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--directions", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gradient_agreement.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = zoo.get("mnist-classifier-a").eval()
    test = data.load("mnist", "test", limit=args.n)
    x, y = test.images, test.labels
    out = {"n": args.n, "directions": args.directions, "steps": args.steps, "classifier": "mnist-classifier-a",
           "generators": {}}
    for name in args.generators:
        gen = zoo.get(name).eval()
        model = DefendedModel(clf, gen, ProjectionConfig.for_generator(gen)).eval()
        rows = out["generators"][name] = {mode: [] for mode in MODES}
        grad_models = [crafting_model(model, gradient=mode) for mode in MODES]
        for h in args.steps:
            t0 = time.perf_counter()  # seconds: both gradients and the finite differences they share
            agreement = gradient_agreement(grad_models, model, x, y, directions=args.directions, h=h)
            for mode, corr in zip(MODES, agreement):
                rows[mode].append({"h": h, "agreement": float(corr.mean()),
                                   "se": float(corr.std() / math.sqrt(len(corr))),
                                   "seconds": time.perf_counter() - t0})
                print(name, mode, json.dumps(rows[mode][-1]), flush=True)
    out["torch_threads"] = torch.get_num_threads()
    out["cpu_seconds"] = time.process_time()  # the whole run, loading included
    out["provenance"] = provenance(args)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
