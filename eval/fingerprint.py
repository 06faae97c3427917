"""Fingerprints of what an evaluation evaluates and of the attacks it runs: everything that can change a
number, so that a resumed run with anything else is refused rather than mixed with the old records.

- a model: its type, the state digest of every weight, and the public settings of *every* submodule (a
  ``DefendedModel`` wrapped in any ``nn.Module`` still shows its projection);
- a setting that is a function (e.g. a learning-rate schedule): its qualified name, a digest of its code
  (constants and nested functions included), its defaults, its closure and the globals it reads — not just
  ``"function"``, so a swapped callable is another run;
- an attack: its class, every hyperparameter (budget and seed included) and the library's scoring rules.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import types
from typing import Any

import torch
from torch import nn

from manifold_defense.attacks.base import Attack
from manifold_defense.utils import state_digest, tensor_digest

__all__ = ["jsonable", "digest", "model_fingerprint", "attack_fingerprint", "SCORING_VERSION"]

_MAX_DEPTH = 8  # deep enough for an attack → its options → a projection config → its values


def digest(obj: Any) -> str:
    """sha256 of a JSON-ready object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _code_digest(code: types.CodeType, depth: int = 0) -> str:
    """sha256 of a code object's bytecode, names and constants (nested code objects by their own digest)."""
    h = hashlib.sha256(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        h.update(_code_digest(const, depth + 1).encode() if isinstance(const, types.CodeType) and depth < _MAX_DEPTH
                 else repr(const).encode())
    return h.hexdigest()


def _callable(fn: Any, depth: int) -> dict[str, Any]:
    """What a function is: name, code, defaults, closure and the global values its code reads."""
    if isinstance(fn, functools.partial):
        return {"partial": _callable(fn.func, depth + 1), "args": jsonable(list(fn.args), depth + 1),
                "keywords": jsonable(dict(fn.keywords), depth + 1)}
    if inspect.ismethod(fn):
        return {"method": _callable(fn.__func__, depth + 1), "self": jsonable(fn.__self__, depth + 1)}
    name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None)
    if code is None:  # a builtin: its name is all there is
        return {"function": name}
    out: dict[str, Any] = {"function": name, "code": _code_digest(code)}
    if fn.__defaults__ or fn.__kwdefaults__:
        out["defaults"] = jsonable([fn.__defaults__, fn.__kwdefaults__], depth + 1)
    if fn.__closure__:
        out["closure"] = jsonable([c.cell_contents for c in fn.__closure__], depth + 1)
    scope = getattr(fn, "__globals__", {})
    reads = {k: scope[k] for k in code.co_names if k in scope and not isinstance(scope[k], types.ModuleType)}
    if reads:  # a helper the function calls, or a module-level constant it uses, is part of it too
        out["globals"] = jsonable(reads, depth + 1)
    return out


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe description of a setting: modules and tensors by digest, functions by their code, objects
    by their public fields (and their type's ``__call__`` code where they are callables)."""
    if depth > _MAX_DEPTH:
        return type(value).__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, nn.Module):
        return {"module": type(value).__name__, "state": state_digest(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)):
        return _callable(value, depth)
    if dataclasses.is_dataclass(value):
        return {"type": type(value).__name__, **jsonable(dataclasses.asdict(value), depth + 1)}
    if hasattr(value, "__dict__"):
        fields = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        out = {"type": type(value).__name__, **jsonable(fields, depth + 1)}
        call = getattr(type(value), "__call__", None)
        if isinstance(call, types.FunctionType) and not isinstance(value, (nn.Module, Attack)):
            out["call"] = _code_digest(call.__code__)  # a callable setting: what it computes (attacks: SCORING_VERSION)
        return out
    return repr(value)


def _settings(module: nn.Module) -> dict[str, Any]:
    """A module's public, non-module attributes (``training`` aside): the settings a wrapper may carry."""
    return jsonable({k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"})


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What is evaluated: the classifier's (and generator's) weights, the projection and the gradient mode of
    the defended model (found anywhere inside ``model``), and every submodule's type and public settings — so
    a wrapper around a ``DefendedModel``, or a projection changed inside
    one, is another model, not the same weights."""
    defended = next((m for m in model.modules() if hasattr(m, "projection") and hasattr(m, "generator")
                     and hasattr(m, "classifier")), None)
    out = {"classifier": state_digest(model if defended is None else defended.classifier),
           "generator": None if defended is None else state_digest(defended.generator),
           "projection": None if defended is None else jsonable(defended.projection),
           "gradient": None if defended is None else getattr(defended, "gradient", None)}
    structure = [[name, f"{type(m).__module__}.{type(m).__qualname__}", _settings(m)]
                 for name, m in model.named_modules()]
    return out | {"state": state_digest(model), "modules": digest(structure)}


#: How attacks judge success; bumped whenever that changes, so records made under other rules are refused.
#: 2: every iterate scored on the attacked model (not only where a surrogate agreed), the search's own verdict
#: kept on deterministic models, NaN logits count as misclassified, AutoAttack's bookkeeping on the real model.
SCORING_VERSION = 2


def attack_fingerprint(spec: Any) -> dict[str, Any]:
    """An attack spec's identity: name, threat model, class and every hyperparameter (budget and seed included),
    the library's scoring rules (``SCORING_VERSION``) and the attack's own ``revision`` when it has one."""
    out = {"name": spec.name, "threat": spec.threat, "iterative": spec.iterative, "class": type(spec.attack).__name__,
           "hyperparameters": jsonable(spec.attack), "scoring": SCORING_VERSION}
    revision = getattr(spec.attack, "revision", 0)
    return out | ({"revision": revision} if revision else {})  # absent at 0: older records of other attacks stay valid
