"""Run an evaluation: a suite (or the caller's attacks) over a range of samples, resumably, in one process, in
local worker processes or under ``torchrun``.

The work is decided by one walk of the plan over the records (``cascade_state``):
clean answers per batch first, then, attack by attack in the suite's order, exactly the samples that walk
says are still to attack — in a survivor cascade only those every earlier attack of the threat model left
standing — in batches, then the escalation rounds on the survivors. Every finished batch is appended to the
fail-closed record store (``manifold_defense.eval.records``), so a killed run (or a dead worker) loses
only the batches in flight, and a rerun into the same folder does only what is missing. A number is only
ever computed from complete records.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_defense.attacks.base import labels_of, predict_labels
from manifold_defense.cache import ProjectionCache, projection_counts
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval.cascade import cascade_state
from manifold_defense.eval.records import (
    IncompleteEvaluation,
    RecordError,
    RecordStore,
    attack_fingerprint,
    attack_record,
    model_fingerprint,
    seal,
    tensor_digest,
)
from manifold_defense.eval.registry import AttackBudget
from manifold_defense.eval.robustness import Evaluation
from manifold_defense.eval.spec import AttackSpec
from manifold_defense.eval.suites import Plan, Suite, build_plan
from manifold_defense.utils import evaluation_mode, state_digest
from manifold_defense.validation import InputError, check_images, check_labels, model_dtype

__all__ = ["evaluate", "WorkerError"]


class WorkerError(RuntimeError):
    """A worker process died (killed, out of memory, crashed): the batches it held are not recorded; everything
    recorded before stays, and rerunning the same evaluation into the same folder finishes the rest."""


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _predictions(model: nn.Module, x: torch.Tensor, attempts: int) -> torch.Tensor:
    """``(attempts, N)`` predicted labels from fresh forward passes (a randomised model draws anew each time);
    -1 where a logit is not finite (wrong for every label)."""
    with torch.no_grad():
        return torch.stack([labels_of(model(x)) for _ in range(attempts)])


# ------------------------------------------------------------------------------------------------ the work


@dataclass
class _Context:
    """Everything a batch of work needs, in this process or a worker."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    plan: Plan
    attempts: int
    judges: dict[str, nn.Module]
    device: torch.device
    show: int  # the first samples of the run whose adversarial inputs the report shows

    def spec(self, name: str, round_: int) -> AttackSpec:
        base = next(s for s in self.plan.specs if s.name == name)
        return base if round_ == 0 else self.plan.escalation(base, round_)


def _do(ctx: _Context, task: tuple) -> dict[str, Any]:
    """One batch: ``("clean", indices)`` or ``("attack", name, round, ε, indices)``; returns what its record needs."""
    idx = list(task[-1])
    xb, yb = ctx.x[idx].to(ctx.device), ctx.y[idx].to(ctx.device)
    t0, before = time.perf_counter(), projection_counts()
    if task[0] == "clean":
        preds = _predictions(ctx.model, xb, ctx.attempts)
        return {"correct": (preds[0] == yb).cpu().tolist(), "correct_all": (preds == yb).all(0).cpu().tolist(),
                "seconds": time.perf_counter() - t0, **_projected(ctx, before)}
    _, name, round_, eps, _ = task
    spec = ctx.spec(name, round_)
    res = spec.attack(ctx.model, xb, yb, epsilon=eps)
    broken = res.success.to(ctx.device)
    if ctx.attempts > 1:
        broken = broken | (_predictions(ctx.model, res.adversarial, ctx.attempts - 1) != yb).any(0)
    out = {"broken": res.success.tolist(), "broken_any": broken.cpu().tolist(), "max_norm": float(res.norms.max()),
           "seconds": time.perf_counter() - t0, "note": f"crafted on {res.crafted_on}" if res.crafted_on else "",
           **_projected(ctx, before), "shown": {i: res.adversarial[k].detach().cpu().clone() for k, i in enumerate(idx)
                                                 if i < ctx.show}}
    if ctx.judges:
        out["judge_agrees"] = {j: (predict_labels(m.to(ctx.device).eval(), res.adversarial.to(ctx.device)) == yb
                                   ).cpu().tolist() for j, m in ctx.judges.items()}
    return out


def _projected(ctx: _Context, before: dict[str, int]) -> dict[str, int]:
    """Rows projected since ``before``: with the attacked model's own projection, and with any (surrogates,
    reference projections of on-manifold attacks)."""
    after = projection_counts()
    spent = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    own = json.dumps(ctx.model.projection.as_dict(), sort_keys=True, default=repr) \
        if isinstance(ctx.model, DefendedModel) else None
    return {"projections": sum(spent.values()), "model_projections": spent.get(own, 0)}


_WORKER: _Context | None = None


def _init_worker(ctx: _Context, threads: int, parent: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = ctx
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int, every: float = 2.0) -> None:
    """A worker's watch on the process that started it: a killed evaluation (SIGTERM, kill -9, a scheduler's
    timeout) takes its workers with it instead of leaving them to burn CPU on batches nobody will record."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _worker_do(task: tuple) -> dict[str, Any]:
    with ProjectionCache():  # per batch: a worker's batches are other samples each time
        return _do(_WORKER, task)


class _Pool:
    """Runs tasks here (``workers=1``) or in ``workers`` spawned processes; yields ``(task, result)`` as they finish."""

    def __init__(self, ctx: _Context, workers: int) -> None:
        self.ctx, self.workers, self.pool = ctx, workers, None
        if workers > 1:
            threads = max(1, torch.get_num_threads() // workers)
            self.pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_init_worker, initargs=(ctx, threads, os.getpid()))

    def run(self, tasks: list[tuple]):
        if self.pool is None:
            for t in tasks:
                yield t, _do(self.ctx, t)
            return
        pending = {self.pool.submit(_worker_do, t): t for t in tasks}
        try:
            for f in futures.as_completed(pending):
                yield pending[f], f.result()
        except futures.process.BrokenProcessPool:
            raise WorkerError("a worker process died (killed, out of memory, or it could not start: a script that "
                              "runs workers needs `if __name__ == '__main__':` around its work, as Python's spawn "
                              "requires); the batches it held are not recorded — rerun the same evaluation into the "
                              "same folder to finish them") from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


class _MemoryStore:
    """The record store of a run without ``out_dir``."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def check_attack(self, name: str, fingerprint: dict) -> None:
        pass

    def append(self, record: dict) -> dict:
        self.records.append(seal(record))
        return self.records[-1]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[AttackSpec] | None = None, *,
    suite: str | Suite | Plan | None = None, epsilons: Mapping[str, Sequence[float]] | None = None,
    threats: Sequence[str] | None = None, budget: AttackBudget | None = None, classifier: nn.Module | None = None,
    generator: nn.Module | None = None, surrogate: ProjectionConfig | None = None,
    escalation_rounds: int | None = None, batch_size: int = 100, out_dir: str | os.PathLike | None = None,
    start: int = 0, stop: int | None = None, progress: bool = True, examples: int = 8, attempts: int | None = None,
    dataset: str | None = None, judges: Mapping[str, nn.Module] | None = None, distributed: bool = True,
    workers: int = 1,
) -> Evaluation:
    """Evaluate ``model`` on samples ``start … stop`` of ``(x, y)`` with a suite (default ``"standard"``,
    ``manifold_defense.eval.suites``) or with the caller's ``attacks`` (every attack on every sample; the
    report says the worst case covers only those).

    Suite options: ``epsilons`` per threat model, ``threats`` (a subset), ``budget`` (``AttackBudget``),
    ``classifier`` (the transfer attack's undefended source), ``generator`` (for latent and on-manifold
    attacks on an undefended model), ``surrogate`` (the projection adaptive attacks craft on),
    ``escalation_rounds`` (default: the suite's). With ``out_dir`` every finished batch is recorded there; a
    rerun does only what is missing, and a folder of another run (model, data, batch size, attempts, suite)
    is refused. ``attempts`` > 1 scores every input that many times (default: the suite's). ``workers`` > 1
    runs the batches in that many local processes; under ``torchrun`` (``out_dir`` required) rank ``r`` runs
    every ``world``-th batch into ``out_dir/shard-r-of-W`` and every rank returns the whole evaluation
    (``distributed=False``: this process alone). ``judges`` (name → classifier independent of the attacked one)
    label every adversarial input. The first ``examples`` samples' adversarial inputs are kept for the report.
    """
    check_images(x, getattr(model, "input_shape", None), dtype=model_dtype(model))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if attacks is not None:
        names = [a.name for a in attacks]
        if len(set(names)) != len(names):
            raise InputError(f"attack names must be unique, got {names}")
        for a in attacks:
            if not a.epsilons or min(a.epsilons) < 0:
                raise InputError(f"attack {a.name} needs non-negative epsilons, got {list(a.epsilons)}")
    plan = build_plan(suite, model, attacks=attacks, classifier=classifier, generator=generator, surrogate=surrogate,
                      budget=budget, epsilons=epsilons, threats=threats, escalation_rounds=escalation_rounds)
    attempts = plan.attempts if attempts is None else attempts
    if attempts < 1:
        raise InputError(f"attempts must be >= 1, got {attempts}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    stop = len(x) if stop is None else min(stop, len(x))
    if not 0 <= start < stop:
        raise InputError(f"empty index range [{start}, {stop}) for {len(x)} samples")
    if start % batch_size:
        raise InputError(f"start ({start}) must be a multiple of batch_size ({batch_size}): a shard must attack the "
                         "same batches as an unsharded run")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    world, rank = _world() if distributed else (1, 0)
    if world > 1 and out_dir is None:
        raise InputError("a distributed evaluation needs out_dir (each rank writes its shard there)")
    if world > 1 and workers > 1:
        raise InputError("use either torchrun or workers, not both")
    n_batches = -(-(stop - start) // batch_size)
    if workers > n_batches:
        raise InputError(f"{workers} workers for {n_batches} batch(es) of {batch_size}: use at most {n_batches} "
                         "workers, or a smaller batch_size")
    run = {"model": model_fingerprint(model), "data": {"digest": tensor_digest(x, y), "n": len(x), "dataset": dataset},
           "batch_size": batch_size, "attempts": attempts, "suite": plan.fingerprint()}
    judges = dict(judges or {})
    attacked = {model_fingerprint(model)["classifier"], state_digest(model)}
    for name, j in judges.items():  # the same weights are the same classifier, whatever object holds them
        if j is model or model_fingerprint(j)["classifier"] in attacked or state_digest(j) in attacked:
            raise InputError(f"judge {name!r} must be independent of the attacked model (it has the attacked "
                             "classifier's weights)")
    if judges:  # part of the run: a resume with other judges is another run
        run["judges"] = {name: model_fingerprint(j) for name, j in sorted(judges.items())}
    norms: dict[str, str | None] = {}
    for s in plan.specs:  # a threat's worst case compares ε across its attacks: one unit per threat
        norm = getattr(s.attack, "norm", None)
        if norms.setdefault(s.threat, norm) != norm:
            raise InputError(f"threat {s.threat!r} mixes budgets in {norms[s.threat]!r} and {norm!r} ({s.name}); "
                             "give attacks with another budget unit their own threat name")
    folder = None if out_dir is None else Path(out_dir) / (f"shard-{rank}-of-{world}" if world > 1 else "")
    store = RecordStore(folder, run) if folder is not None else _MemoryStore()
    device = next(iter(model.parameters()), x).device  # a model without parameters runs where x is
    ctx = _Context(model, x, y, plan, attempts, judges, device, start + examples)
    pool = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(evaluation_mode(model))  # the caller's model comes back in its own modes
        stack.callback(store.close)
        stack.callback(lambda: pool is not None and pool.close())
        for s in plan.specs:
            store.check_attack(s.name, attack_fingerprint(s))
        pool = _Pool(ctx, workers)
        with ProjectionCache():  # the clean pass's projections serve the attacks that start from them, and the grid
            state, shown = _run(ctx, plan, store, pool, range(start, stop), batch_size, world, rank, run, out_dir,
                                progress)
            ev = Evaluation.from_state(state, range(start, stop), plan, attempts=attempts)
            ev.run, ev.examples = run, _examples(model, x, start, min(examples, stop - start), shown,
                                                 folder if world == 1 else None)
    return ev


def _run(ctx: _Context, plan: Plan, store: Any, pool: _Pool, indices: range, batch_size: int, world: int, rank: int,
         run: dict, out_dir: Any, progress: bool) -> tuple[Any, dict]:
    """Clean batches, then whatever the walk of the plan says is next, until nothing is; returns the final state
    and the shown adversarial inputs."""
    shown: dict[tuple[str, float], dict[int, tuple[bool, torch.Tensor]]] = {}

    def records() -> list[dict]:
        if world == 1:
            return store.records
        torch.distributed.barrier()
        out = []
        for r in range(world):
            shard = Path(out_dir) / f"shard-{r}-of-{world}"
            out += store.records if r == rank else RecordStore(shard, run, lock=False).records
        torch.distributed.barrier()  # nobody appends before every rank has read: all ranks walk the same records
        return out

    def execute(tasks: list[tuple], desc: str, total: int, make: Any) -> None:
        mine = [t for j, t in enumerate(tasks) if j % world == rank]
        bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
        for task, out in pool.run(mine):
            store.append(make(task, out))
            bar.update(len(task[-1]))
        bar.close()

    done_clean = {i for r in records() if r["kind"] == "clean" for i in r["indices"]}
    batches = [[i for i in range(b, min(b + batch_size, indices.stop)) if i not in done_clean]
               for b in range(indices.start, indices.stop, batch_size)]
    execute([("clean", b) for b in batches if b], "clean", sum(map(len, batches)),
            lambda t, o: {"kind": "clean", "start": t[-1][0], "indices": t[-1], **o})
    last: set[tuple] = set()
    while True:
        state = cascade_state(records(), indices, plan)
        if state.todo is None:
            if state.gaps:
                raise IncompleteEvaluation(state.gaps)
            return state, shown
        now = {(spec.name, eps, tuple(need)) for spec, eps, need in state.todos}
        for name, eps, need in now & last:  # the work was done and the walk still wants it: a bug, not a loop
            raise RecordError(f"{name}@{eps:g} was recorded on {len(need)} samples and is still missing: the records "
                              "do not match the plan")
        last = now
        tasks, makers = [], {}
        # every threat model's next stage at once: workers take batches of one while another's are few
        for spec, eps, need in state.todos:
            fingerprint = attack_fingerprint(spec)
            store.check_attack(spec.name, fingerprint)

            def make(task: tuple, out: dict, spec: AttackSpec = spec, fingerprint: dict = fingerprint) -> dict:
                idx = task[-1]
                for i, img in out.pop("shown").items():
                    seen = shown.setdefault((spec.threat, task[3]), {})
                    if not seen.get(i, (False,))[0]:
                        seen[i] = (bool(out["broken_any"][idx.index(i)]), img)
                return attack_record(spec, fingerprint, task[3], idx[0], idx, **out)

            tasks += [("attack", spec.escalates or spec.name, spec.round, eps, need[k:k + batch_size])
                      for k in range(0, len(need), batch_size)]
            makers[(spec.escalates or spec.name, spec.round, eps)] = make  # one stage per threat: a unique key
        desc = ", ".join(f"{spec.name}@{eps:g}" for spec, eps, _ in state.todos)
        execute(tasks, desc, sum(len(t[-1]) for t in tasks), lambda t, o: makers[t[1:4]](t, o))


def _examples(model: nn.Module, x: torch.Tensor, start: int, k: int, shown: dict, folder: Path | None
              ) -> dict[str, torch.Tensor]:
    """The report's image grid: the first ``k`` clean inputs and, per threat model at its largest ε, each one's
    adversarial input (the first that broke it, else the last tried; the clean input where none was tried),
    with their projections for a defended model. Kept in ``folder/examples.pt`` across resumed runs."""
    if k <= 0:
        return {}
    from manifold_defense.checkpoint import save_checkpoint

    path = None if folder is None else folder / "examples.pt"
    try:  # pictures only: a damaged file is replaced by this run's, never a reason to stop
        stored = torch.load(path, map_location="cpu", weights_only=True) if path is not None and path.is_file() else {}
    except Exception:  # noqa: BLE001 — a truncated zip, another format: the grid starts afresh
        stored = {}
    if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
        stored = {}
    clean = x[start:start + k].detach().cpu().clone()  # a copy: a view would save all of x's storage
    # rows of an earlier call over fewer samples (another stop) cannot be extended image by image: started afresh
    rows = {"clean": clean, **{n: v for n, v in stored.items() if n != "clean" and len(v) == k}}
    top: dict[str, float] = {}
    for threat, eps in shown:
        top[threat] = max(eps, top.get(threat, eps))
    for threat, eps in top.items():  # a sample keeps the first input that broke it, across resumed runs too
        name = f"{threat} ε={eps:g}"
        imgs, flags = rows.get(name, clean).clone(), rows.get(f"{name} broken", torch.zeros(k, dtype=torch.bool)).clone()
        for i, (broken, img) in sorted(shown[(threat, eps)].items()):
            if not flags[i - start]:
                imgs[i - start], flags[i - start] = img, broken
        rows[name], rows[f"{name} broken"] = imgs, flags
    changed = rows.keys() != stored.keys() or any(not torch.equal(v, stored[n]) for n, v in rows.items())
    if path is not None and changed:
        save_checkpoint(path, rows)
    rows = {n: v for n, v in rows.items() if not n.endswith(" broken")}
    out = {}
    for name, imgs in rows.items():
        out[name] = imgs
        if isinstance(model, DefendedModel):
            with torch.no_grad():
                out[f"{name} → projected"] = model.project(imgs.to(next(model.parameters()).device)).x.cpu()
    return out
