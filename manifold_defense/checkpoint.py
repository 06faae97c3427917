"""Checkpoints: atomic writes, safe loads and resumable training loops.

A checkpoint is a plain dict of tensors, numbers and strings, loaded with
``torch.load(weights_only=True)`` so a file from elsewhere cannot execute code. It records each
module's architecture name and constructor arguments (``manifold_defense.models`` rebuilds the
module from them) and the training configuration, so resuming a run with a different configuration
fails instead of silently mixing the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_defense._version import __version__
from manifold_defense.utils import tensor_digest

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "model_payload", "train_epochs", "file_lock",
           "atomic_write_text", "same_config", "FORMAT"]

FORMAT = "manifold-defense/1"
_UMASK = os.umask(0o022)  # read the process's umask (setting it back at once)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupted or from an incompatible configuration."""


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically: a reader sees the old file or the new one, never half.
    A checkpoint of this library (``payload["format"]``) carries the digest of its tensors, checked by
    ``load_checkpoint``: weights changed on disk are an error, not a silently different model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    if payload.get("format") == FORMAT:
        payload["digest"] = _tensors_digest(payload)
    _atomic_write(path, "wb", lambda f: torch.save(payload, f))


def _tensors_digest(payload: Mapping[str, Any]) -> str:
    """sha256 of every tensor in ``payload`` (names, dtypes, shapes, bytes), in key order; ``digest`` left out."""
    h = hashlib.sha256()

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(tensor_digest(value).encode())
        elif isinstance(value, Mapping):
            for k in sorted(value, key=str):
                if not (name == "" and k == "digest"):
                    walk(value[k], f"{name}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}/{i}")

    walk(payload, "")
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    _atomic_write(path, "w", lambda f: f.write(text))
    return path


def _atomic_write(path: Path, mode: str, write: Callable[[Any], Any]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: written files get the user's usual mode (0644)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, unsafe pickle ...
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # torch's advice comes in colour and over many lines
        raise CheckpointError(f"checkpoint {path} is corrupted or not a manifold-defense checkpoint ({first})") \
            from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a manifold-defense checkpoint (format {FORMAT!r} expected)")
    if "digest" in payload and payload["digest"] != _tensors_digest(payload):  # older files carry none
        raise CheckpointError(f"the tensors of {path} do not match the digest they were saved with: the file was "
                              "changed after it was written (flipped or edited bytes); retrain or restore it")
    return payload


def _model_entry(model: nn.Module) -> dict[str, Any]:
    arch = getattr(model, "arch_name", None)
    if arch is None or not hasattr(model, "config"):
        raise CheckpointError(f"{type(model).__name__} is not a registered architecture; use manifold_defense.models.register_architecture")
    return {"arch": arch, "config": dict(model.config), "state_dict": model.state_dict()}


def model_payload(
    modules: Mapping[str, nn.Module],
    extra_state: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    complete: bool,
) -> dict[str, Any]:
    """A checkpoint dict: each module's architecture, constructor arguments and weights, ``extra_state``
    (optimisers, RNG ...), ``metadata`` (with the library version and the time) and whether it is final."""
    meta = {"library_version": __version__, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
    return {
        "format": FORMAT,
        "modules": {k: _model_entry(m) for k, m in modules.items()},
        "state": dict(extra_state),
        "metadata": meta,
        "complete": complete,
    }


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def same_config(a: Any, b: Any) -> bool:
    """Configurations equal up to float rounding (dicts, lists and tuples compared element-wise)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_config(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_config(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def train_epochs(
    *,
    path: str | os.PathLike | None,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    epochs: int,
    epoch_fn: Callable[[int], Mapping[str, float]],
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    finalize: Callable[[], Mapping[str, Any]] | None = None,
    desc: str = "train",
    progress: bool = True,
    writer: bool = True,
    log_path: str | os.PathLike | None = None,
    guard: Any | None = None,
) -> list[dict[str, float]]:
    """Run ``epoch_fn(epoch)`` for ``epochs`` epochs with a checkpoint after each one.

    The one training loop of the library. If ``path`` holds an unfinished run with the same
    ``config`` it resumes after the last finished epoch (modules, optimizers, schedulers, the
    data-order ``generator`` and the global RNG are restored); a finished run with fewer epochs is
    extended. A different ``config`` raises ``CheckpointError`` rather than mixing two runs.
    ``finalize()`` runs once at the end; its dict (e.g. test accuracy) is stored as
    ``metadata["quality"]``. Returns the per-epoch metrics history. ``log_path`` gets one JSON line of
    metrics per finished epoch. Only a ``writer`` (rank 0 of a distributed run) writes files.
    ``guard`` (e.g. ``training.OverfitGuard``) judges each finished epoch (``after_epoch(epoch, modules,
    optimizers)`` → metrics; it may restore earlier weights, and ends the run when its ``stopped`` is set); its
    ``state_dict()`` is checkpointed and its ``summary()`` stored as ``metadata["guard"]``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    schedulers = dict(schedulers or {})
    config = dict(config)
    metadata = dict(metadata or {})
    history: list[dict[str, float]] = []
    start = 0
    if path is not None and Path(path).exists():
        ckpt = load_checkpoint(path)
        old = ckpt["metadata"].get("config", {})
        if not same_config(old, config):
            diff = sorted(k for k in set(old) | set(config) if not same_config(old.get(k), config.get(k)))
            raise CheckpointError(
                f"{path} was written by a run with another configuration (differs in: {', '.join(diff)}); "
                "delete it or choose another output path"
            )
        state = ckpt["state"]
        for k, m in modules.items():
            m.load_state_dict(ckpt["modules"][k]["state_dict"])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if generator is not None and "data_generator" in state:
            generator.set_state(state["data_generator"])
        _set_rng_state(state["rng"])
        history = [dict(h) for h in state["history"]]
        start = int(state["epoch"])
        if guard is not None and "guard" in state:
            guard.load_state_dict(state["guard"])
    if (start >= epochs or (guard is not None and guard.stopped)) and path is not None:
        return history

    def save(epoch: int, complete: bool, quality: Mapping[str, Any] | None = None) -> None:
        if path is None or not writer:
            return
        meta = {**metadata, "config": config, "epochs_done": epoch, "history": history}
        if quality is not None:
            meta["quality"] = dict(quality)
        if guard is not None:
            meta["guard"] = guard.summary()
        state = {
            "epoch": epoch,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": _rng_state(),
            "history": history,
        }
        if generator is not None:
            state["data_generator"] = generator.get_state()
        if guard is not None:
            state["guard"] = guard.state_dict()
        save_checkpoint(path, model_payload(modules, state, meta, complete=complete))

    bar = tqdm(range(start, epochs), desc=desc, disable=not (progress and writer), initial=start, total=epochs,
               unit="epoch")
    for epoch in bar:
        t0, c0 = time.perf_counter(), time.process_time()
        for m in modules.values():
            m.train()
        metrics = {k: float(v) for k, v in epoch_fn(epoch).items()}
        if guard is not None:  # before the epoch's timing ends: the check is part of what training costs
            metrics.update({k: float(v) for k, v in guard.after_epoch(epoch, modules, optimizers).items()})
        for s in schedulers.values():
            s.step()
        metrics["epoch"] = epoch + 1
        metrics["seconds"] = time.perf_counter() - t0
        metrics["cpu_seconds"] = time.process_time() - c0  # every thread of this process: what the epoch cost
        history.append(metrics)
        if log_path is not None and writer:
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k not in ("epoch",)})
        stopped = guard is not None and guard.stopped
        if epoch + 1 < epochs and not stopped:
            save(epoch + 1, complete=False)
        if stopped:
            break
    if guard is not None:
        guard.finish(modules)
    for m in modules.values():
        m.eval()
    quality = dict(finalize()) if finalize is not None else None
    save(epochs, complete=True, quality=quality)
    return history


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on ``path + '.lock'`` (POSIX), so two processes never train one zoo entry."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: no locking
            pass
        yield
