"""The one adapter to MadryLab's ``robustness`` library (Engstrom et al., 2019).

Used from it: the attack steps (``robustness.attack_steps.L2Step`` / ``LinfStep``: the projection, the
steepest-ascent step and the random start of Madry et al.'s PGD), its architectures
(``robustness.cifar_models`` / ``imagenet_models``) and its input normaliser, to load its checkpoints.
Its ``Attacker.forward`` hard-codes ``.cuda()`` and its ImageNet models import a torchvision module that
no longer exists (``torchvision.models.utils``), so the attacker is never called (the PGD loop around
the steps is written here, device-agnostic) and that module is stood in for by ``torch.hub``'s function
of the same name before the ImageNet architectures are imported.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manifold_defense.inversion.engine import StepRule, descend
from manifold_defense.inversion.terms import negative_cross_entropy
from manifold_defense.validation import InputError

__all__ = ["madry_step", "madry_pgd", "MadryStep", "robustness_architecture", "load_robustness_checkpoint", "RobustnessClassifier"]


def madry_step(norm: str, x: torch.Tensor, epsilon: float, step_size: float) -> Any:
    """The robustness library's attack step for ``norm`` ('l2' or 'linf') around ``x``."""
    from robustness.attack_steps import L2Step, LinfStep  # the module itself needs only torch

    if norm not in ("l2", "linf"):
        raise InputError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if not epsilon > 0 or not step_size > 0:
        raise InputError(f"epsilon and step_size must be > 0, got {epsilon}, {step_size}")
    return (L2Step if norm == "l2" else LinfStep)(orig_input=x, eps=epsilon, step_size=step_size)


class MadryStep(StepRule):
    """The robustness library's PGD step as a step rule of the descent engine: ``L2Step`` / ``LinfStep``'s
    ``step`` (normalised or sign ascent of ``step_size``) then its ``project`` (the ε-ball around the
    row's clean input, and [0, 1]). The engine minimises, so the ascent is taken along ``−g``."""

    name = "madry"

    def __init__(self, norm: str, x: torch.Tensor, epsilon: float, step_size: float) -> None:
        madry_step(norm, x[:1], epsilon, step_size)  # validates the arguments
        self.norm, self.x, self.epsilon, self.step_size = norm, x, epsilon, step_size

    def update(self, v: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, state: dict[str, torch.Tensor], t: int,
               *, rows: torch.Tensor | None = None, differentiable: bool = False) -> tuple[torch.Tensor, dict]:
        step = madry_step(self.norm, self.x if rows is None else self.x[rows], self.epsilon, self.step_size)
        return step.project(step.step(v, -g)), state


def madry_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, epsilon: float, steps: int,
              step_size: float | None = None, random_start: bool | str = True,
              data: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Madry et al. 2018 PGD with the robustness library's steps, on the descent engine: ``steps`` ascent
    steps on the cross-entropy, each projected onto the ε-ball around ``x`` and [0, 1]; returns the last
    iterate (as Madry et al. train on it). Default step 2.5 ε / steps.

    ``random_start``: True / 'uniform' (the library's random point of the ball), 'gaussian' (``x`` + 0.001 ·
    N(0, 1), TRADES' start, Zhang et al. 2019) or False. ``data``: the engine's term to *minimise* instead
    of −CE (``term(x, v, rows)`` → one value per row; e.g. TRADES' −KL to the clean prediction)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if random_start not in (True, False, "uniform", "gaussian"):
        raise InputError(f"random_start must be True, False, 'uniform' or 'gaussian', got {random_start!r}")
    x = x.detach()
    size = 2.5 * epsilon / steps if step_size is None else step_size
    step = madry_step(norm, x, epsilon, size)
    if random_start == "gaussian":
        start = step.project(x + 0.001 * torch.randn_like(x))
    elif random_start:
        start = step.project(step.random_perturb(x))
    else:
        start = x.clone()
    res = descend(start, lambda v: v, negative_cross_entropy(model, y) if data is None else data, steps=steps,
                  lr=size, step_rule=MadryStep(norm, x, epsilon, size), keep="last", desc="madry-pgd")
    return res.variables.detach()


# ------------------------------------------------------------------------------------ checkpoints


def _model_zoo(dataset: str):
    if dataset == "cifar":
        from robustness import cifar_models

        return cifar_models
    if dataset == "imagenet":
        try:
            import torchvision.models.utils  # noqa: F401
        except ImportError:  # removed in torchvision 0.13; the robustness wheel still imports it
            shim = types.ModuleType("torchvision.models.utils")
            shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
            sys.modules["torchvision.models.utils"] = shim
        from robustness import imagenet_models

        return imagenet_models
    raise InputError(f"dataset must be 'cifar' or 'imagenet' (the robustness library's architecture families), "
                     f"got {dataset!r}")


def robustness_architecture(name: str, *, num_classes: int = 10, dataset: str = "cifar") -> nn.Module:
    """An untrained robustness-library architecture by name (e.g. 'resnet18' for CIFAR-sized inputs,
    or with ``dataset='imagenet'`` its ImageNet models); never downloads weights."""
    zoo = _model_zoo(dataset)
    ctor = getattr(zoo, name, None)
    if ctor is None or not callable(ctor) or name.startswith("_"):
        known = sorted(n for n in dir(zoo) if n[:1].islower() and callable(getattr(zoo, n)))
        raise InputError(f"unknown robustness {dataset} architecture {name!r}; available: {', '.join(known)}")
    kwargs = {"num_classes": num_classes}
    if dataset == "imagenet":
        kwargs["pretrained"] = False
    return ctor(**kwargs)


class RobustnessClassifier(nn.Module):
    """A model from a robustness-format checkpoint as a plain classifier: ``model(normalizer(x))`` on images
    in [0, 1] → logits (the ``AttackerModel`` without its attacker)."""

    def __init__(self, model: nn.Module, normalizer: nn.Module, input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        if input_shape is not None:
            self.input_shape = tuple(int(s) for s in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.normalizer(x))
        return out[0] if isinstance(out, tuple) else out


def load_robustness_checkpoint(
    path: str | os.PathLike,
    arch: str | nn.Module,
    *,
    num_classes: int = 10,
    dataset: str = "cifar",
    input_shape: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> RobustnessClassifier:
    """Load a MadryLab robustness checkpoint (``{'model': state_dict, 'epoch': …, …}`` whose keys carry the
    ``module.model.`` / ``module.attacker.`` / ``module.normalizer.`` prefixes of a DataParallel-wrapped
    ``AttackerModel``) into a ``RobustnessClassifier`` on ``device``.

    ``arch`` names a robustness architecture (see ``robustness_architecture``) or is an ``nn.Module``
    to load the ``model.`` weights into. Loads with ``torch.load(weights_only=True)``; the attacker's
    copy of the weights is ignored. A checkpoint that does not fit the architecture raises
    ``CheckpointError`` naming the missing / unexpected / mis-shaped keys.
    """
    from robustness.tools.helpers import InputNormalize

    from manifold_defense.checkpoint import CheckpointError
    from manifold_defense.utils import resolve_device

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpicklable content, truncated file ...
        raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from exc
    state = ckpt.get("model", ckpt.get("state_dict")) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a robustness checkpoint: expected a dict with a 'model' (or "
                              "'state_dict') state dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    norm = {k[len("normalizer."):]: v for k, v in state.items() if k.startswith("normalizer.")}
    if not weights or not {"new_mean", "new_std"} <= norm.keys():
        raise CheckpointError(f"{path} is not a robustness checkpoint: it needs module.model.* weights and "
                              f"module.normalizer.new_mean/new_std (found keys like {list(state)[:4]})")
    net = arch if isinstance(arch, nn.Module) else robustness_architecture(arch, num_classes=num_classes,
                                                                           dataset=dataset)
    name = arch if isinstance(arch, str) else type(arch).__name__
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or mis_shaped:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") if keys else "none"

        raise CheckpointError(f"{path} does not match architecture {name}: missing {few(missing)}; unexpected "
                              f"{few(unexpected)}; wrong shape {few(mis_shaped)}")
    net.load_state_dict(weights)
    normalizer = InputNormalize(norm["new_mean"].flatten(), norm["new_std"].flatten())
    return RobustnessClassifier(net, normalizer, input_shape).to(resolve_device(device)).eval()
