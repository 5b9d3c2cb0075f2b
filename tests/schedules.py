"""Run per-thread schedules of link calls on real drivers, record, judge.

Shared by the concurrent property test and the negative control: both
run the same contention (threads released together by a barrier on a
few hot uids) and differ only in the try-set they use.

Each thread is one *process* of the history. Every link call is recorded
through :class:`HistoryRecorder`; routing-state changes are not link
calls and are not recorded, but they happen in etcd, where G4 is checked
against the registration as it was at each link's revision.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from etcdroute import (
    PodNotAcceptingError,
    PodNotRegisteredError,
    RoutingState,
    ServerDriver,
)
from etcdroute.checker import CheckResult, check_history
from etcdroute.history import HistoryRecorder, Operation
from etcdroute.links import pod_from_kv
from etcdroute.models import LinkResult

LINK_OPS = ("try_set", "set", "remove", "remove_with_id", "get")
STATE_OPS = ("drain", "accept")

#: ``try_set(driver, uid, pod) -> LinkResult``: the variant under test.
TrySet = Callable[[ServerDriver, str, int], LinkResult]


@dataclass(frozen=True)
class Step:
    """One call of a thread: ``op`` on ``uid`` with ``pod``."""

    op: str
    uid: str
    pod: int

    def __repr__(self) -> str:
        return f"{self.op}({self.uid},{self.pod})"


Schedule = Sequence[Sequence[Step]]


def real_try_set(driver: ServerDriver, uid: str, pod: int) -> LinkResult:
    return driver.try_set_linked_pod(uid, pod)


def run_schedule(
    drivers: Mapping[int, ServerDriver],
    schedule: Schedule,
    *,
    try_set: TrySet = real_try_set,
    uid_prefix: str = "",
) -> list[Operation]:
    """Run each thread's steps concurrently; return the history.

    Thread ``i`` calls through the driver of pod ``i mod len(drivers)``.
    After every thread finished, one final ``get`` per uid is recorded,
    so the end state in etcd is part of what is checked.
    """
    recorder = HistoryRecorder()
    pods = sorted(drivers)
    barrier = threading.Barrier(len(schedule))
    errors: list[BaseException] = []

    def worker(index: int, steps: Sequence[Step]) -> None:
        caller = drivers[pods[index % len(pods)]]
        process = f"t{index}"
        try:
            barrier.wait(timeout=30)
            for step in steps:
                _perform(
                    recorder,
                    process,
                    caller,
                    drivers,
                    step,
                    try_set,
                    uid_prefix,
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(index, steps), daemon=True)
        for index, steps in enumerate(schedule)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]

    judge = drivers[pods[0]]
    for uid in sorted({s.uid for steps in schedule for s in steps}):
        name = uid_prefix + uid
        recorder.call(
            "final", "get", name, None, lambda n=name: judge.get_linked_pod(n)
        )
    return recorder.operations()


def _perform(
    recorder: HistoryRecorder,
    process: str,
    caller: ServerDriver,
    drivers: Mapping[int, ServerDriver],
    step: Step,
    try_set: TrySet,
    uid_prefix: str,
) -> None:
    uid = uid_prefix + step.uid
    if step.op in STATE_OPS:
        state = (
            RoutingState.DRAINING
            if step.op == "drain"
            else RoutingState.ACCEPTING
        )
        drivers[step.pod].set_routing_state(state)
        return
    calls: dict[str, tuple[int | None, Callable[[], object]]] = {
        "try_set": (step.pod, lambda: try_set(caller, uid, step.pod)),
        "set": (step.pod, lambda: caller.set_linked_pod(uid, step.pod)),
        "remove": (None, lambda: caller.remove_linked_pod(uid)),
        "remove_with_id": (
            step.pod,
            lambda: caller.remove_linked_pod_with_id(uid, step.pod),
        ),
        "get": (None, lambda: caller.get_linked_pod(uid)),
    }
    pod, call = calls[step.op]
    # A refused target is recorded as "fail": nothing changed.
    with contextlib.suppress(PodNotAcceptingError, PodNotRegisteredError):
        recorder.call(process, step.op, uid, pod, call)


def check_liveness_bound(
    driver: ServerDriver, history: Sequence[Operation]
) -> list[str]:
    """G4: every link made went to a pod registered (and, for try_set,
    accepting) at the revision it was made, as etcd itself recorded.

    Returns readable problems, empty when G4 holds.
    """
    problems = []
    service = driver.service
    prefix = driver.keyspace.pods_prefix(service)
    for op in history:
        result = op.result or {}
        wrote = op.op == "set" or (
            op.op == "try_set" and result.get("created") is True
        )
        if op.outcome != "ok" or not wrote:
            continue
        revision = result["revision"]
        kvs, _ = driver.store.get_prefix(prefix, revision=revision)
        states = {
            info.pod_id: info.routing_state
            for info in (pod_from_kv(service, kv) for kv in kvs)
        }
        state = states.get(result["pod"])
        if state is None:
            problems.append(f"{op.describe()}: pod not registered")
        elif op.op == "try_set" and state is not RoutingState.ACCEPTING:
            problems.append(f"{op.describe()}: pod was {state.value}")
    return problems


def judge(
    driver: ServerDriver, history: Sequence[Operation]
) -> tuple[CheckResult, list[str]]:
    """Check G1, G2, G3 (the checker) and G4 (etcd's own history)."""
    return check_history(history), check_liveness_bound(driver, history)
