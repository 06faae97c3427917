"""A cache of deterministic projections, so that within one evaluation a projection is paid once.

The clean inputs of an evaluation are projected by the clean pass, then again by every attack that starts
from the projection (latent reparameterisation, on-manifold PGD, the range-target attack's anchors), every
escalation round of those, the sanity checks and the report's example grid. Inside
``with ProjectionCache():`` ``ProjectionConfig.project`` keeps each
deterministic projection per input row and hands it back when the *exact same bytes* are projected again
with the same settings onto the same generator.

Fail-closed by construction: a row is looked up by a 64-bit key of its content, and a hit is returned only
after the stored input is compared with the new one value for value; a mismatch (two inputs sharing a key)
is a ``ProjectionCacheError``, never another input's projection. Stochastic projections (fresh
restarts per call) and differentiable (unrolled) projections are never cached. What an attack *scores* on
— the defended model's forward pass — does not read the cache (it may fill it): a success is judged by a
cold projection, as without the cache.
"""

from __future__ import annotations

import contextvars
import json
from collections import OrderedDict
from typing import Any

import torch

from manifold_defense.utils import content_keys

__all__ = ["ProjectionCache", "ProjectionCacheError", "active_cache", "projection_counts", "count_projection"]

_ACTIVE: contextvars.ContextVar["ProjectionCache | None"] = contextvars.ContextVar("projection_cache", default=None)


#: rows projected in this process, per projection settings (JSON): what an evaluation's records report as its
#: projections per image (a count, like the engine's generator evaluations; never used to decide anything)
_PROJECTED: dict[str, int] = {}


def count_projection(settings: dict, rows: int) -> None:
    """Add ``rows`` projected with ``settings`` to this process's count."""
    key = json.dumps(settings, sort_keys=True, default=repr)
    _PROJECTED[key] = _PROJECTED.get(key, 0) + rows


def projection_counts() -> dict[str, int]:
    """Rows projected in this process so far, per projection settings (JSON)."""
    return dict(_PROJECTED)


class ProjectionCacheError(RuntimeError):
    """A cache hit whose stored input differs from the one asked for: the cache is broken; nothing is returned."""


def active_cache() -> "ProjectionCache | None":
    """The cache of the innermost ``with ProjectionCache():`` block, if any."""
    return _ACTIVE.get()


class ProjectionCache:
    """Per input row: the projection's latent, image, data term and objective (at most ``max_rows`` rows, least
    recently used first out). ``hits`` and ``misses`` count rows."""

    def __init__(self, max_rows: int = 50_000) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._generators: dict[int, torch.nn.Module] = {}
        self.hits = self.misses = 0
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "ProjectionCache":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._token)
        self._token = None

    def __len__(self) -> int:
        return len(self._rows)

    def scope(self, generator: torch.nn.Module, settings: dict) -> tuple:
        """What a projection depends on besides its input: the generator object and the settings. The cache keeps
        every generator it has seen alive, so no other object can take the same ``id`` while entries refer to it
        (a class-conditional generator makes a new module per class and call)."""
        self._generators[id(generator)] = generator
        return id(generator), json.dumps(settings, sort_keys=True, default=repr)

    def keys(self, scope: tuple, x: torch.Tensor) -> list[tuple]:
        """One key per row of ``x``: the scope and a 64-bit hash of the row's exact values."""
        return [(scope, int(k)) for k in content_keys(x).tolist()]

    def lookup(self, keys: list[tuple], x: torch.Tensor) -> list[dict[str, Any] | None]:
        """The stored rows for ``keys`` (None where absent), each checked against its row of ``x``."""
        out = []
        for key, row in zip(keys, x):
            hit = self._rows.get(key)
            if hit is not None:
                if hit["input"].shape != row.shape or not torch.equal(hit["input"], row.detach().to(hit["input"])):
                    raise ProjectionCacheError("a cached projection was stored for another input with the same key: "
                                               "the cache is broken, its projections cannot be trusted")
                self._rows.move_to_end(key)
            out.append(hit)
        self.hits += sum(h is not None for h in out)
        self.misses += sum(h is None for h in out)
        return out

    def store(self, keys: list[tuple], x: torch.Tensor, fields: dict[str, torch.Tensor]) -> None:
        """Keep row ``i`` of every tensor in ``fields`` (and of ``x``, to check later hits) under ``keys[i]``."""
        for i, key in enumerate(keys):
            self._rows[key] = {"input": x[i].detach().clone(), **{k: v[i].detach().clone() for k, v in fields.items()}}
            self._rows.move_to_end(key)
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)
