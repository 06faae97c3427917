"""The fail-closed record store of an evaluation.

An evaluation folder holds ``run.json`` (the fingerprint of what is evaluated: the model — every weight and
every submodule's settings, the projection, the gradient mode —, the data, the batch size, the number of
attempts, the suite) and ``records.jsonl`` (one line per finished piece of work: clean correctness of a
batch, or one attack at one ε on the samples it attacked, with that attack's own fingerprint — class,
hyperparameters, budget, seed — its note, e.g. which projection it crafted on, and a digest of the line
itself). Everything that could make a number wrong is an error, never a silent "robust":

- resuming into a folder of another run (another model, projection, data, batch size, suite) or of an older
  record format → ``RecordError`` naming what differs; nothing recorded is touched (use another folder);
- two processes writing one folder at once → ``RecordError`` (the store holds a lock while open);
- records of an attack whose fingerprint differs (another budget, e.g. ``--quick`` before) → error;
- a line whose digest does not match its content (hand-edited, corrupted), or whose fields contradict
  each other (samples out of order, per-sample fields of another length, a perturbation above its ε) →
  error; a garbled line before the last → error (only a torn *last* line, an interrupted append, is dropped);
- a sample a suite should have attacked without a record → ``IncompleteEvaluation`` listing the gaps;
- shards merged with different fingerprints or overlapping samples → ``RecordError``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from manifold_defense.checkpoint import atomic_write_text
from manifold_defense.eval.fingerprint import attack_fingerprint, digest, jsonable, model_fingerprint
from manifold_defense.utils import state_digest, tensor_digest
from manifold_defense.validation import InputError

__all__ = ["RecordError", "IncompleteEvaluation", "RecordStore", "state_digest", "tensor_digest", "model_fingerprint",
           "attack_fingerprint", "jsonable", "read_records", "merge_records", "record_status", "seal", "check_record",
           "index_ranges",
           "FORMAT"]

#: 3: a digest per record, the suite in ``run.json``, records of the samples an attack attacked (a cascade
#: attacks survivors only), model fingerprints of every submodule's settings
FORMAT = "manifold-defense-records/3"


class RecordError(InputError):
    """Records that cannot be trusted for this run: another configuration, overlapping shards, a corrupt file."""


class IncompleteEvaluation(RuntimeError):
    """Some (attack, ε, sample) has no record: the evaluation is not finished, so no number is reported."""

    def __init__(self, gaps: dict[str, list[int]]) -> None:
        self.gaps = gaps
        shown = "; ".join(f"{k}: {index_ranges(v)}" for k, v in sorted(gaps.items())[:8])
        more = f" (+{len(gaps) - 8} more)" if len(gaps) > 8 else ""
        super().__init__(f"missing records (rerun the evaluation into the same folder to fill them): {shown}{more}")


def index_ranges(idx: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"`` (six runs at most, then "...")."""
    idx = sorted(idx)
    out, start = [], None
    for a, b in zip(idx, idx[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = None
    return ", ".join(out[:6]) + (" ..." if len(out) > 6 else "")


def seal(record: dict) -> dict:
    """``record`` with ``digest``: the sha256 of its own content, checked whenever it is read."""
    body = {k: v for k, v in record.items() if k != "digest"}
    return body | {"digest": digest(body)}


def check_record(r: dict, *, batch_size: int | None = None, require_digest: bool = False, where: str = "") -> None:
    """A ``RecordError`` unless ``r`` is a well-formed record: its digest matches its content (required
    with ``require_digest``), its samples are sorted, distinct and start at ``start``, no more than
    ``batch_size``, every per-sample field has one entry per sample, and an attack's largest perturbation is
    within its ε."""
    where = where or "a record"
    if "digest" in r:
        if r["digest"] != digest({k: v for k, v in r.items() if k != "digest"}):
            raise RecordError(f"{where} does not match its digest: it was edited or corrupted after it was written; "
                              "its numbers cannot be trusted (move the folder aside and rerun)")
    elif require_digest:
        raise RecordError(f"{where} has no digest (every record of this format carries one); it cannot be trusted")
    try:
        kind, idx = r["kind"], [int(i) for i in r["indices"]]
        fields = ("correct", "correct_all") if kind == "clean" else ("broken", "broken_any")
        if kind not in ("clean", "attack"):
            raise ValueError(f"unknown kind {kind!r}")
        if not idx or any(b <= a for a, b in zip(idx, idx[1:])) or idx[0] < 0 or int(r["start"]) != idx[0]:
            raise ValueError(f"samples must be distinct, sorted and start at 'start' ({r.get('start')})")
        if batch_size is not None and len(idx) > batch_size:
            raise ValueError(f"{len(idx)} samples in one record, more than the run's batch size {batch_size}")
        for f in fields:
            if f in r and len(r[f]) != len(idx):
                raise ValueError(f"{len(r[f])} entries in {f!r} for {len(idx)} samples")
        if fields[0] not in r:
            raise ValueError(f"no {fields[0]!r}")
        if kind == "attack":
            eps, top = float(r["epsilon"]), float(r.get("max_norm", 0.0))
            if not (math.isfinite(eps) and eps >= 0) or top > eps + 1e-5 * max(1.0, eps):
                raise ValueError(f"largest perturbation {top:g} above its ε = {eps:g}")
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{where} is malformed ({exc}); its numbers cannot be trusted") from None


def read_records(path: str | os.PathLike, *, repair: bool = False, require_digest: bool | None = None,
                 batch_size: int | None = None) -> list[dict]:
    """The records of ``records.jsonl``, each checked (``check_record``). A torn last line (an interrupted
    append) is dropped (and, with ``repair``, removed from the file); a line that does not parse anywhere else
    is a ``RecordError``. ``require_digest`` (default: when the folder's ``run.json`` is of the current
    ``FORMAT``): every record must carry its digest."""
    path = Path(path)
    if not path.is_file():
        return []
    if require_digest is None:
        meta = path.parent / "run.json"
        require_digest = meta.is_file() and _load_run(meta).get("format") == FORMAT
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                if repair:
                    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
                break
            raise RecordError(f"{path} line {i + 1} is garbled; the records after it cannot be trusted either. "
                              "Move the folder aside and rerun, or repair the line by hand") from None
        if not isinstance(r, dict):
            raise RecordError(f"{path} line {i + 1} is not a record")
        check_record(r, batch_size=batch_size, require_digest=require_digest, where=f"{path} line {i + 1}")
        records.append(r)
    return records


def _load_run(meta: Path) -> dict:
    """``run.json``, or a ``RecordError`` naming the file when it is not a JSON object."""
    try:
        run = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{meta} is garbled ({exc.__class__.__name__}); the folder cannot be matched to any run: "
                          "move it aside and evaluate into a new folder") from None
    if not isinstance(run, dict):
        raise RecordError(f"{meta} is not a run description; move the folder aside and evaluate into a new folder")
    return run


def _differs(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class RecordStore:
    """The records of one evaluation run in ``folder``, checked against the run's fingerprint.

    ``run`` is the run fingerprint (model, data, batch size, attempts, suite). A folder holding another run's
    records is refused with the fields that differ; an empty folder starts a new run. While open (until
    ``close``, or the end of a ``with`` block) the store holds an exclusive lock on the folder
    (``lock=False``: read and check only, e.g. another rank's shard): a second process writing the same
    folder is refused instead of duplicating records.
    """

    def __init__(self, folder: str | os.PathLike, run: dict[str, Any], *, lock: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "records.jsonl"
        self.run = json.loads(json.dumps({"format": FORMAT, **run}))
        self._lock = None
        self._lock = _lock(self.folder) if lock else None
        try:
            meta = self.folder / "run.json"
            if meta.is_file():
                old = _load_run(meta)
                if old.get("format") != FORMAT:
                    raise RecordError(f"{self.folder} holds records of an older format ({old.get('format')}; this "
                                      f"version writes {FORMAT}): nothing was changed — evaluate into a new folder")
                if old != self.run:
                    raise RecordError(f"{self.folder} holds the records of another evaluation (differs in: "
                                      f"{', '.join(_differs(old, self.run))}); nothing was changed — evaluate into "
                                      "another folder")
            elif self.path.is_file() and self.path.stat().st_size:
                raise RecordError(f"{self.path} has records but no run.json: they cannot be matched to this run; "
                                  "evaluate into another folder")
            elif lock:
                atomic_write_text(meta, json.dumps(self.run, indent=2, sort_keys=True))
            self.records = read_records(self.path, repair=lock, require_digest=True,
                                        batch_size=self.run.get("batch_size"))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder's lock (the records stay readable in ``records``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __del__(self) -> None:
        self.close()

    def check_attack(self, name: str, fingerprint: dict) -> None:
        """Records of attack ``name`` must come from the same attack (class, hyperparameters, budget, revision)."""
        sha = digest(fingerprint)
        for r in self.records:
            if r.get("attack") == name and r.get("attack_sha") != sha:
                raise RecordError(f"{self.path} holds records of {name!r} made with other settings (another budget or "
                                  "hyperparameters, e.g. a --quick run); evaluate into another folder")

    def append(self, record: dict) -> dict:
        """Seal (``seal``) and append one record (flushed and fsynced: a crash loses at most the line being
        written); returns the sealed record."""
        if self._lock is None:
            raise RecordError(f"{self.folder}: this store is closed or read-only; nothing was written")
        record = seal(record)
        check_record(record, batch_size=self.run.get("batch_size"), where="the record to append")
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        return record


def _lock(folder: Path) -> Any:
    """An open file holding an exclusive, non-blocking lock on ``folder/.lock`` (released when closed or when the
    process ends, even by a crash); a ``RecordError`` when another process holds it."""
    f = open(folder / ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: concurrent writers are not detected
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RecordError(f"{folder} is being written by another evaluation (its lock is held): run one process per "
                          "folder, or shards into separate folders joined with `records merge`") from None
    return f


def attack_record(spec: Any, fingerprint: dict, epsilon: float, start: int, indices: list[int], **fields: Any) -> dict:
    """The record of one attack at one ε on the samples ``indices`` (the ones it attacked)."""
    return {"kind": "attack", "attack": spec.name, "attack_sha": digest(fingerprint), "fingerprint": fingerprint,
            "epsilon": float(epsilon), "threat": spec.threat, "iterative": spec.iterative, "start": start,
            "indices": indices, **fields}


def merge_records(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """Join shard folders into ``out`` (``run.json`` + ``records.jsonl``) after checking that every shard ran
    the same evaluation (run and attack fingerprints), that every record is intact and that no sample is
    recorded twice. Returns the merged records; coverage is checked when an
    ``Evaluation`` is built from them."""
    if not folders:
        raise RecordError("merge_records needs at least one shard folder")
    runs, merged, seen, shas = [], [], {}, {}
    for folder in folders:
        meta = Path(folder) / "run.json"
        if not meta.is_file():
            raise RecordError(f"{folder} has no run.json: not an evaluation folder of this library")
        runs.append(_load_run(meta))
        for r in read_records(Path(folder) / "records.jsonl", batch_size=runs[-1].get("batch_size")):
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
            raise RecordError(f"{folder} is a shard of another evaluation than {folders[0]} (differs in: "
                              f"{', '.join(_differs(runs[0], run))})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RecordError(f"--out {out} is a file, not a folder: merge into a new folder")
    if not out.parent.is_dir():
        raise RecordError(f"--out {out}: its parent folder {out.parent} does not exist (a typo?); create it first")
    if (out / "records.jsonl").exists() or (out / "run.json").exists():
        raise RecordError(f"{out} already holds records; merge into a new folder")
    try:
        out.mkdir(exist_ok=True)
        with contextlib.closing(_lock(out)):
            atomic_write_text(out / "run.json", json.dumps(runs[0], indent=2, sort_keys=True))
            atomic_write_text(out / "records.jsonl", "".join(json.dumps(r) + "\n" for r in merged))
            shown = next((Path(f) / "examples.pt" for f in folders if (Path(f) / "examples.pt").is_file()), None)
            if shown is not None:  # the report's image grid: the first shard's (it holds the first samples)
                shutil.copyfile(shown, out / "examples.pt")
    except OSError as exc:
        raise RecordError(f"cannot write {out}: {exc.strerror or exc}") from None
    return merged


def record_status(folder: str | os.PathLike) -> dict[str, Any]:
    """What an evaluation folder holds, for watching a long or sharded run: per column (``clean``, then each
    ``attack@ε``) the samples recorded, how many of them the column found correct (clean, in every attempt) or
    broken (an attack, in any attempt, among the samples recorded correct), its seconds, and the samples still
    missing out of the run's ``n``. An attack that has not finished a batch yet has no column: the folder does
    not know which attacks a run will add.

    Counts only: a column with missing samples is not a robust accuracy, so none is computed here
    (``evaluate`` on the same folder reports the numbers once nothing is missing).
    """
    folder = Path(folder)
    meta = folder / "run.json"
    if not meta.is_file():
        raise RecordError(f"{folder} has no run.json: not an evaluation folder of this library")
    run = _load_run(meta)
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
                     "batches": col["batches"], "missing": index_ranges(missing) if missing else ""})
    return {"folder": str(folder), "n": n, "batch_size": run.get("batch_size"), "attempts": run.get("attempts"),
            "columns": rows}  # no "complete": the folder does not know which attacks are still to start
