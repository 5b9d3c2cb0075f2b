"""Drive one variant from several worker processes, threads in each.

Workers are started with the ``spawn`` method, so each one imports
etcdroute afresh and opens its own connection after it starts (a gRPC
channel must never cross a ``fork()``, field report FR11). Each worker
connects, reports ready, and waits for one shared start signal; its
threads then run operations until the common deadline (or an operation
budget) and record every call in the history format shared with the
history checker (``etcdroute.checker``): one caller (``process`` field)
is one thread, times are ``time.monotonic()``, which on Linux is one
system-wide clock.

Each worker writes its history to a JSON-lines file; :func:`run_variant`
merges them, sorted by invocation time, into one file per variant with a
header line, and returns the operations as well.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from etcdroute.bench.variants import BenchClient, Target, open_client
from etcdroute.bench.workload import Workload
from etcdroute.errors import EtcdRouteError, InvalidArgumentError

logger = logging.getLogger(__name__)

#: How long workers may take to import, connect and report ready.
READY_TIMEOUT = 120.0

#: Operations whose ``pod`` argument is recorded (the others get null).
_WITH_POD = frozenset({"try_set", "set", "remove_with_id"})


class BenchError(EtcdRouteError):
    """A benchmark run could not be carried out (not a check failure)."""


@dataclass(frozen=True)
class RunSpec:
    """One variant, one workload, one concurrency."""

    variant: str
    target: Target
    workload: Workload
    history_path: str
    processes: int = 1
    threads: int = 4
    duration: float = 5.0
    ops_per_thread: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.processes <= 64:
            raise InvalidArgumentError("processes", "must be in 1..64")
        if not 1 <= self.threads <= 256:
            raise InvalidArgumentError("threads", "must be in 1..256")
        if self.duration <= 0 and self.ops_per_thread <= 0:
            raise InvalidArgumentError(
                "duration", "give a duration or an operation budget"
            )

    @property
    def callers(self) -> int:
        return self.processes * self.threads


@dataclass
class RunResult:
    """What one run produced: its history and worker-side counters."""

    spec: RunSpec
    ops: list[dict[str, Any]]
    started: float
    ended: float
    retries: int
    #: CPU seconds the workers used while running (user + system).
    cpu_seconds: float
    error_samples: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return max(self.ended - self.started, 1e-9)


def run_variant(
    spec: RunSpec,
    on_tick: Callable[[int, float], None] | None = None,
    tick: float = 0.25,
) -> RunResult:
    """Run ``spec``; call ``on_tick(ops done, seconds elapsed)`` meanwhile."""
    return run_together([spec], on_tick, tick)[0]


def run_together(
    specs: list[RunSpec],
    on_tick: Callable[[int, float], None] | None = None,
    tick: float = 0.25,
) -> list[RunResult]:
    """Run several specs at the same time, from one start signal.

    Variants that run together see the same machine load, which makes
    their ratio far steadier on a shared machine than runs in turn.
    """
    context = multiprocessing.get_context("spawn")
    messages: Any = context.Queue()
    go = context.Event()
    go_time: Any = context.Value("d", 0.0, lock=False)
    counts = [context.Array("q", spec.callers, lock=False) for spec in specs]
    paths = [
        [f"{spec.history_path}.p{index}" for index in range(spec.processes)]
        for spec in specs
    ]
    workers = [
        context.Process(
            target=_worker,
            args=(
                spec,
                (group, index),
                paths[group][index],
                messages,
                go,
                go_time,
                counts[group],
            ),
            name=f"bench-{spec.variant}-{index}",
            daemon=True,
        )
        for group, spec in enumerate(specs)
        for index in range(spec.processes)
    ]
    for worker in workers:
        worker.start()
    try:
        _wait_for(messages, "ready", workers)

        # One start signal for all: every thread works until one deadline.
        go_time.value = started = time.monotonic()
        go.set()
        while any(worker.is_alive() for worker in workers):
            if on_tick is not None:
                done = sum(sum(array) for array in counts)
                on_tick(done, time.monotonic() - started)
            _join_any(workers, tick)
        finals = _wait_for(messages, "done", workers)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
    return [
        _result(
            spec,
            [body for body in finals if body["group"] == group],
            paths[group],
            started,
        )
        for group, spec in enumerate(specs)
    ]


def _result(
    spec: RunSpec,
    finals: list[dict[str, Any]],
    paths: list[str],
    started: float,
) -> RunResult:
    retries = sum(int(body["retries"]) for body in finals)
    cpu = sum(float(body["cpu"]) for body in finals)
    samples = [text for body in finals for text in body["errors"]][:10]
    ops = _merge(paths, spec)
    ends = (op["complete"] or op["invoke"] for op in ops)
    ended = max(ends, default=started)
    return RunResult(spec, ops, started, ended, retries, cpu, samples)


def _join_any(workers: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


def _wait_for(
    messages: Any, kind: str, workers: list[Any]
) -> list[dict[str, Any]]:
    """One message of ``kind`` per worker; a worker error or death aborts."""
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + READY_TIMEOUT
    while len(bodies) < len(workers):
        if time.monotonic() > deadline:
            raise BenchError(f"workers did not report {kind} in time")
        try:
            got, body = messages.get(timeout=0.5)
        except queue.Empty:
            dead = [w.name for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"worker(s) {dead} died") from None
            continue
        if got == "error":
            raise BenchError(f"a worker failed: {body['error']}")
        if got == kind:
            bodies.append(body)
    return bodies


def _merge(paths: list[str], spec: RunSpec) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            ops.extend(json.loads(line) for line in lines if line.strip())
        Path(path).unlink()
    ops.sort(key=lambda op: op["invoke"])
    header = {
        "format": "etcdroute-history",
        "version": 1,
        "variant": spec.variant,
        "namespace": spec.target.namespace,
        "service": spec.target.service,
        "processes": spec.processes,
        "threads": spec.threads,
        "workload": asdict(spec.workload),
    }
    with open(spec.history_path, "w", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        for op in ops:
            out.write(json.dumps(op) + "\n")
    return ops


# ---------------------------------------------------- worker process


def _worker(
    spec: RunSpec,
    tag: tuple[int, int],
    path: str,
    messages: Any,
    go: Any,
    go_time: Any,
    counts: Any,
) -> None:
    """Entry point of one worker process (spawned).

    ``tag`` is (which spec of the run, which process of that spec).
    """
    group, index = tag
    try:
        client = open_client(spec.variant, spec.target)
    except Exception as exc:
        messages.put(("error", {"error": f"{spec.variant}: {exc!r}"}))
        return
    messages.put(("ready", {"group": group, "index": index}))
    if not go.wait(READY_TIMEOUT):
        client.close()
        return

    deadline = go_time.value + spec.duration if spec.duration > 0 else None
    cpu_start = time.process_time()
    histories: list[list[dict[str, Any]]] = []
    errors: list[str] = []
    threads = []
    for number in range(spec.threads):
        slot = index * spec.threads + number
        history: list[dict[str, Any]] = []
        histories.append(history)
        caller = _Caller(
            client, spec, slot, f"p{index}t{number}", deadline, history
        )
        threads.append(
            threading.Thread(
                target=caller.run, args=(counts, errors), daemon=True
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = time.process_time() - cpu_start
    client.close()

    with open(path, "w", encoding="utf-8") as out:
        for history in histories:
            for op in history:
                out.write(json.dumps(op) + "\n")
    body = {
        "group": group,
        "index": index,
        "retries": client.retries,
        "errors": errors[:5],
        "cpu": cpu,
    }
    messages.put(("done", body))


class _Caller:
    """One thread's loop: draw an operation, time it, record it."""

    def __init__(
        self,
        client: BenchClient,
        spec: RunSpec,
        slot: int,
        name: str,
        deadline: float | None,
        history: list[dict[str, Any]],
    ) -> None:
        pods = [pod.pod_id for pod in spec.target.pods]
        self._client = client
        self._stream = spec.workload.stream(slot, pods)
        self._slot = slot
        self._name = name
        self._deadline = deadline
        self._budget = spec.ops_per_thread
        self._history = history

    def run(self, counts: Any, errors: list[str]) -> None:
        monotonic = time.monotonic
        done = 0
        while self._budget <= 0 or done < self._budget:
            op, uid, pod = self._stream.next()
            call = self._client.operation(op)
            invoke = monotonic()
            if self._deadline is not None and invoke >= self._deadline:
                break
            entry: dict[str, Any] = {
                "process": self._name,
                "op": op,
                "uid": uid,
                "pod": pod if op in _WITH_POD else None,
                "invoke": invoke,
            }
            try:
                result = call(uid, pod)
            except Exception as exc:
                entry["complete"] = monotonic()
                entry["outcome"] = self._client.outcome_of(exc)
                if len(errors) < 5:
                    errors.append(f"{op} {uid}: {exc!r}"[:300])
            else:
                entry["complete"] = monotonic()
                entry["outcome"] = "ok"
                entry["result"] = result
            self._history.append(entry)
            done += 1
            counts[self._slot] = done
