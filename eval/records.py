"""The fail-closed record store of an evaluation.

An evaluation folder holds ``run.json`` (the fingerprint of what is evaluated: the classifier's and the
generator's weights, the projection, the gradient mode, the data, the batch size, the number of
attempts) and ``records.jsonl`` (one line per finished batch: clean correctness, or one attack at one ε
with that attack's own fingerprint — class, hyperparameters, budget, seed — and its note, e.g. which
projection it crafted on). Everything that could make a number wrong is an error, never a silent
"robust":

- resuming into a folder of another run (another model, projection, data, batch size) →
  :class:`RecordError` naming what differs; nothing recorded is touched (use another folder);
- records of an attack whose fingerprint differs (another budget, e.g. ``--quick`` before) → error;
- a garbled line before the last → error (only a torn *last* line, an interrupted append, is dropped);
- a (attack, ε, sample) without a record → :class:`IncompleteEvaluation` listing the gaps;
- shards merged with different fingerprints or overlapping samples → :class:`RecordError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from manifold_defense.checkpoint import atomic_write_text
from manifold_defense.utils import state_digest, tensor_digest
from manifold_defense.validation import InputError

__all__ = ["RecordError", "IncompleteEvaluation", "RecordStore", "state_digest", "tensor_digest", "model_fingerprint",
           "attack_fingerprint", "read_records", "merge_records", "record_status", "FORMAT"]

FORMAT = "manifold-defense-records/2"


class RecordError(InputError):
    """Records that cannot be trusted for this run: another configuration, overlapping shards, a corrupt file."""


class IncompleteEvaluation(RuntimeError):
    """Some (attack, ε, sample) has no record: the evaluation is not finished, so no number is reported."""

    def __init__(self, gaps: dict[str, list[int]]) -> None:
        self.gaps = gaps
        shown = "; ".join(f"{k}: {_ranges(v)}" for k, v in sorted(gaps.items())[:8])
        more = f" (+{len(gaps) - 8} more)" if len(gaps) > 8 else ""
        super().__init__(f"missing records (rerun the evaluation into the same folder to fill them): {shown}{more}")


def _ranges(idx: Sequence[int]) -> str:
    idx = sorted(idx)
    out, start = [], None
    for a, b in zip(idx, idx[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = None
    return ", ".join(out[:6]) + (" ..." if len(out) > 6 else "")


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe description of hyperparameters (modules and tensors by digest, objects by their fields)."""
    if depth > 8:  # deep enough for an attack → its options → a projection config → its values
        return type(value).__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, nn.Module):
        return {"module": type(value).__name__, "state": state_digest(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if dataclasses.is_dataclass(value):
        return {"type": type(value).__name__, **_jsonable(dataclasses.asdict(value), depth + 1)}
    if hasattr(value, "__dict__"):
        fields = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "surrogate_description"}
        return {"type": type(value).__name__, **_jsonable(fields, depth + 1)}
    return repr(value)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What is evaluated: the classifier's (and generator's) weights, the projection and the gradient mode."""
    if hasattr(model, "projection") and hasattr(model, "generator") and hasattr(model, "classifier"):
        return {"classifier": state_digest(model.classifier), "generator": state_digest(model.generator),
                "projection": _jsonable(model.projection), "gradient": getattr(model, "gradient", None)}
    return {"classifier": state_digest(model), "generator": None, "projection": None, "gradient": None}


#: How attacks judge success; bumped whenever that changes, so records made under other rules are refused.
#: 2: every iterate scored on the attacked model (not only where a surrogate agreed), the search's own verdict
#: kept on deterministic models, NaN logits count as misclassified, AutoAttack's bookkeeping on the real model.
SCORING_VERSION = 2


def attack_fingerprint(spec: Any) -> dict[str, Any]:
    """An attack spec's identity: name, threat model, class and every hyperparameter (budget and seed included),
    the library's scoring rules (:data:`SCORING_VERSION`) and the attack's own ``revision`` when it has one."""
    out = {"name": spec.name, "threat": spec.threat, "iterative": spec.iterative, "class": type(spec.attack).__name__,
           "hyperparameters": _jsonable(spec.attack), "scoring": SCORING_VERSION}
    revision = getattr(spec.attack, "revision", 0)
    return out | ({"revision": revision} if revision else {})  # absent at 0: older records of other attacks stay valid


def read_records(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The records of ``records.jsonl``. A torn last line (an interrupted append) is dropped (and, with
    ``repair``, removed from the file); a line that does not parse anywhere else is a :class:`RecordError`."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                if repair:
                    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
                break
            raise RecordError(f"{path} line {i + 1} is garbled; the records after it cannot be trusted either. "
                              "Move the folder aside and rerun, or repair the line by hand") from None
    return records


class RecordStore:
    """The records of one evaluation run in ``folder``, checked against the run's fingerprint.

    ``run`` is the run fingerprint (model, data, batch size, attempts). A folder holding another run's
    records is refused with the fields that differ; an empty folder starts a new run.
    """

    def __init__(self, folder: str | os.PathLike, run: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "records.jsonl"
        self.run = {"format": FORMAT, **run}
        meta = self.folder / "run.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old != json.loads(json.dumps(self.run)):
                diff = sorted(k for k in set(old) | set(self.run) if old.get(k) != json.loads(json.dumps(self.run.get(k))))
                raise RecordError(f"{self.folder} holds the records of another evaluation (differs in: {', '.join(diff)}); "
                                  "nothing was changed — evaluate into another folder")
        elif self.path.is_file() and self.path.stat().st_size:
            raise RecordError(f"{self.path} has records but no run.json: they cannot be matched to this run; "
                              "evaluate into another folder")
        else:
            atomic_write_text(meta, json.dumps(self.run, indent=2, sort_keys=True))
        self.records = read_records(self.path, repair=True)
        self._done = {self._key(r): r.get("indices") for r in self.records}

    @staticmethod
    def _key(r: dict) -> tuple:
        return (r["kind"], r.get("attack"), r.get("epsilon"), r["start"])

    def check_attack(self, name: str, fingerprint: dict) -> None:
        """Records of attack ``name`` must come from the same attack (class, hyperparameters, budget, revision)."""
        sha = _sha(fingerprint)
        for r in self.records:
            if r.get("attack") == name and r.get("attack_sha") != sha:
                raise RecordError(f"{self.path} holds records of {name!r} made with other settings (another budget or "
                                  "hyperparameters, e.g. a --quick run); evaluate into another folder")

    def has(self, kind: str, attack: str | None, epsilon: float | None, start: int,
            indices: list[int] | None = None) -> bool:
        """Whether that batch's record exists. With ``indices``, a record of the batch holding other samples
        (a last batch cut short by an earlier, smaller ``stop``) is a :class:`RecordError`, not "done": it
        would leave the samples it lacks unattacked in every later resume."""
        key = (kind, attack, epsilon, start)
        if key not in self._done:
            return False
        held = self._done[key]
        if indices is not None and held is not None and list(held) != list(indices):
            raise RecordError(f"{self.path}: the batch at {start} was recorded for samples {held[0]}…{held[-1]} "
                              f"and this run needs {indices[0]}…{indices[-1]} (another stop); nothing was "
                              "changed — evaluate with the earlier stop, or into another folder")
        return True

    def append(self, record: dict) -> None:
        """Append one record (flushed and fsynced: a crash loses at most the line being written)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self._done[self._key(record)] = record.get("indices")


def attack_record(spec: Any, fingerprint: dict, epsilon: float, start: int, indices: list[int], **fields: Any) -> dict:
    """The record of one attack at one ε on one batch."""
    return {"kind": "attack", "attack": spec.name, "attack_sha": _sha(fingerprint), "fingerprint": fingerprint,
            "epsilon": float(epsilon), "threat": spec.threat, "iterative": spec.iterative, "start": start,
            "indices": indices, **fields}


def merge_records(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """Join shard folders into ``out`` (``run.json`` + ``records.jsonl``) after checking that every shard ran
    the same evaluation (run and attack fingerprints) and that no sample is recorded twice. Returns the
    merged records; coverage is checked when an :class:`~manifold_defense.eval.Evaluation` is built from them."""
    if not folders:
        raise RecordError("merge_records needs at least one shard folder")
    runs, merged, seen, shas = [], [], {}, {}
    for folder in folders:
        meta = Path(folder) / "run.json"
        if not meta.is_file():
            raise RecordError(f"{folder} has no run.json: not an evaluation folder of this library")
        runs.append(json.loads(meta.read_text()))
        for r in read_records(Path(folder) / "records.jsonl"):
            if r["kind"] == "attack":
                prev = shas.setdefault(r["attack"], r["attack_sha"])
                if prev != r["attack_sha"]:
                    raise RecordError(f"shards ran {r['attack']!r} with different settings ({folder})")
            for i in r["indices"]:
                key = (r["kind"], r.get("attack"), r.get("epsilon"), i)
                if key in seen:
                    raise RecordError(f"sample {i} of {key[1] or 'clean'} is recorded in both {seen[key]} and {folder}: "
                                      "shards overlap")
                seen[key] = str(folder)
            merged.append(r)
    for folder, run in zip(folders[1:], runs[1:]):
        if run != runs[0]:
            diff = sorted(k for k in set(run) | set(runs[0]) if run.get(k) != runs[0].get(k))
            raise RecordError(f"{folder} is a shard of another evaluation than {folders[0]} (differs in: {', '.join(diff)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "records.jsonl").exists():
        raise RecordError(f"{out} already holds records; merge into a new folder")
    atomic_write_text(out / "run.json", json.dumps(runs[0], indent=2, sort_keys=True))
    atomic_write_text(out / "records.jsonl", "".join(json.dumps(r) + "\n" for r in merged))
    return merged


def coverage_gaps(records: Iterable[dict], indices: Sequence[int], jobs: Iterable[tuple[str, float]]) -> dict[str, list[int]]:
    """Per ``clean`` and per ``attack@ε`` of ``jobs``, the indices without a record."""
    have: dict[tuple, set[int]] = {}
    for r in records:
        key = ("clean",) if r["kind"] == "clean" else (r["attack"], float(r["epsilon"]))
        have.setdefault(key, set()).update(r["indices"])
    want = set(indices)
    gaps = {}
    for key in [("clean",), *((a, float(e)) for a, e in jobs)]:
        missing = sorted(want - have.get(key, set()))
        if missing:
            gaps["clean" if key == ("clean",) else f"{key[0]}@{key[1]:g}"] = missing
    return gaps


def record_status(folder: str | os.PathLike) -> dict[str, Any]:
    """What an evaluation folder holds, for watching a long or sharded run: per column (``clean``, then each
    ``attack@ε``) the samples recorded, how many of them the column found correct (clean, in every attempt) or
    broken (an attack, in any attempt, among the samples recorded correct), its seconds, and the samples still
    missing out of the run's ``n``. An attack that has not finished a batch yet has no column: the folder does
    not know which attacks a run will add.

    Counts only: a column with missing samples is not a robust accuracy, so none is computed here
    (:func:`~manifold_defense.eval.evaluate` on the same folder reports the numbers once nothing is missing).
    """
    folder = Path(folder)
    meta = folder / "run.json"
    if not meta.is_file():
        raise RecordError(f"{folder} has no run.json: not an evaluation folder of this library")
    run = json.loads(meta.read_text())
    n = (run.get("data") or {}).get("n")
    records = read_records(folder / "records.jsonl")
    correct = {i: bool(c) for r in records if r["kind"] == "clean"
               for i, c in zip(r["indices"], r.get("correct_all", r["correct"]))}
    columns: dict[str, dict[str, Any]] = {}
    for r in records:
        name = "clean" if r["kind"] == "clean" else f"{r['attack']}@{float(r['epsilon']):g}"
        if r["kind"] == "clean":
            hits = sum(correct[i] for i in r["indices"])
        else:  # an attack's success on a sample the model already got wrong is no break
            broken = r.get("broken_any", r["broken"])
            hits = sum(bool(b) and correct.get(i, False) for i, b in zip(r["indices"], broken))
        col = columns.setdefault(name, {"column": name, "recorded": set(), "hits": 0, "seconds": 0.0, "batches": 0})
        col["recorded"].update(r["indices"])
        col["hits"] += hits
        col["seconds"] += float(r.get("seconds", 0.0))
        col["batches"] += 1
    rows = []
    for col in columns.values():
        done = col.pop("recorded")
        hits = col.pop("hits")
        missing = sorted(set(range(n)) - done) if n is not None else []
        rows.append({"column": col["column"], "recorded": len(done),
                     "correct" if col["column"] == "clean" else "broken": hits, "seconds": col["seconds"],
                     "batches": col["batches"], "missing": _ranges(missing) if missing else ""})
    return {"folder": str(folder), "n": n, "batch_size": run.get("batch_size"), "attempts": run.get("attempts"),
            "columns": rows}  # no "complete": the folder does not know which attacks are still to start
