"""Does a defended model's answer depend on the batch an input sits in? Measured per projection preset.

Classifier A behind each preset's projection onto mnist-vae20, on N MNIST test images, clean and FGSM-0.3
inputs (crafted on the classifier: inputs near decision boundaries): the fraction whose prediction is the
same alone as in a batch of 100, and in batches of 7; the largest logit difference. The library pads every
network pass to ``ProjectionConfig.min_rows`` rows and seeds restarts by content; the ``min_rows=1``
column shows what that buys. Target: the same prediction for >= 99.5 % of inputs, every preset.

    python benchmarks/batch_invariance.py [--n 100] [--out benchmarks/results/batch_invariance.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from common import provenance

from manifold_defense import data, zoo
from manifold_defense.attacks import FGSM
from manifold_defense.defended import PROJECTIONS, DefendedModel, ProjectionConfig


def compare(model: DefendedModel, x: torch.Tensor) -> dict:
    with torch.no_grad():
        together = torch.cat([model(c) for c in x.split(100)])
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
        sevens = torch.cat([model(c) for c in x.split(7)])
    same = lambda a: float((a.argmax(1) == together.argmax(1)).float().mean())  # noqa: E731
    return {"same_prediction_alone": same(alone), "same_prediction_batches_of_7": same(sevens),
            "bitwise_equal_logits_alone": bool(torch.equal(alone, together)),
            "max_logit_difference_alone": float((alone - together).abs().max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_invariance.json"))
    args = p.parse_args(argv)
    clf, gen = zoo.get("mnist-classifier-a").eval(), zoo.get("mnist-vae20").eval()
    test = data.load("mnist", "test", limit=args.n)
    x, y = test.images, test.labels
    inputs = {"clean": x, "fgsm_0.3": FGSM()(clf, x, y, epsilon=0.3).adversarial}
    out = {"n": args.n, "presets": {}}
    for preset in PROJECTIONS:
        cfg = ProjectionConfig.preset(preset, gen)
        for pad in (cfg.min_rows, 1):
            label = preset if pad == cfg.min_rows else f"{preset} (min_rows=1)"
            model = DefendedModel(clf, gen, dataclasses.replace(cfg, min_rows=pad)).eval()
            out["presets"][label] = {k: compare(model, v) for k, v in inputs.items()}
            print(label, json.dumps(out["presets"][label]), flush=True)
    out["targets"] = {f"{k}: same prediction >= 99.5 %": all(v["same_prediction_alone"] >= 0.995 for v in r.values())
                      for k, r in out["presets"].items() if "min_rows=1" not in k}
    out["torch_threads"] = torch.get_num_threads()
    out["provenance"] = provenance(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
