"""The negative control: a broken try-set MUST be caught by the checker.

:func:`etcdroute.naive.naive_try_set` reads, then writes without a
transaction. Run under contention on a real etcd, its history must fail
the checker every time, or the checker proves nothing. The contention is
built so that the race is certain, not likely: in the first test a
barrier holds every caller between its read and its write; in the second
the callers run the same schedule as the property test, with a pause
between read and write far longer than the spread of their start.
The real try-set under the identical schedule must pass.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schedules import Schedule, Step, judge, real_try_set, run_schedule

from etcdroute import ServerDriver
from etcdroute.checker import check_history
from etcdroute.history import HistoryRecorder
from etcdroute.links import LinkTable
from etcdroute.models import LinkResult
from etcdroute.naive import naive_try_set

PODS = (1, 2, 3)


@pytest.fixture
def pods(make_driver: Callable[..., ServerDriver]) -> dict[int, ServerDriver]:
    return {pod: make_driver(pod) for pod in PODS}


def naive_with_pause(
    pause: float,
) -> Callable[[ServerDriver, str, int], LinkResult]:
    def try_set(driver: ServerDriver, uid: str, pod: int) -> LinkResult:
        table = LinkTable(driver.store, driver.keyspace)
        return naive_try_set(
            table, driver.service, uid, pod, between=lambda: time.sleep(pause)
        )

    return try_set


def test_barrier_race_is_caught_on_every_uid(
    pods: dict[int, ServerDriver],
) -> None:
    callers = 6
    uids = [f"room-{n}" for n in range(3)]
    recorder = HistoryRecorder()
    driver = pods[1]
    table = LinkTable(driver.store, driver.keyspace)

    def caller(index: int) -> None:
        for uid in uids:
            recorder.call(
                f"c{index}",
                "try_set",
                uid,
                PODS[index % 3],
                lambda u=uid: naive_try_set(
                    table,
                    driver.service,
                    u,
                    PODS[index % 3],
                    between=lambda: between.wait(timeout=30),
                ),
            )

    # All callers read "absent" before any of them writes.
    between = threading.Barrier(callers)
    threads = [
        threading.Thread(target=caller, args=(i,)) for i in range(callers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    result = check_history(recorder.operations())
    assert result.failed_uids("linearizability") == set(uids)
    assert result.failed_uids("agreement") == set(uids)
    for violation in result.violations:
        if violation.kind == "linearizability":
            # The explanation: two creators of one link, nothing else.
            assert len(violation.operations) == 2, violation.describe()
            assert all(
                op.result and op.result["created"]
                for op in violation.operations
            )


#: The property test's kind of contention, made heavy: every thread
#: claims the same hot uids in the same order, some also remove.
HEAVY: Schedule = [
    [Step("try_set", uid, PODS[t % 3]) for uid in ("h1", "h2", "h1")]
    + ([Step("remove", "h1", 1)] if t == 0 else [])
    for t in range(6)
]


def test_naive_try_set_under_contention_is_caught(
    pods: dict[int, ServerDriver],
) -> None:
    history = run_schedule(
        pods,
        HEAVY,
        try_set=naive_with_pause(0.2),
        uid_prefix=uuid.uuid4().hex[:6],
    )
    result, _ = judge(pods[1], history)
    assert not result.ok, "the checker missed the broken try-set"
    assert result.failed_uids("linearizability")
    assert result.failed_uids("agreement")


def test_real_try_set_under_the_same_contention_passes(
    pods: dict[int, ServerDriver],
) -> None:
    history = run_schedule(
        pods, HEAVY, try_set=real_try_set, uid_prefix=uuid.uuid4().hex[:6]
    )
    result, g4 = judge(pods[1], history)
    assert result.ok and not g4, result.describe()
    created = [
        op
        for op in history
        if op.op == "try_set" and op.result and op.result["created"]
    ]
    assert created, "no try_set created anything: nothing was tested"
    # The contention is real: some try_sets on one uid overlapped.
    try_sets = [op for op in history if op.op == "try_set"]
    assert any(
        a is not b
        and a.uid == b.uid
        and a.invoke < (b.complete or 0)
        and b.invoke < (a.complete or 0)
        for a in try_sets
        for b in try_sets
    ), "no two try_sets raced"


@pytest.mark.slow
def test_failures_shrink_to_a_small_schedule(
    pods: dict[int, ServerDriver],
) -> None:
    """Hypothesis, given the broken try-set, ends on a tiny schedule."""
    failing: list[Schedule] = []
    naive = naive_with_pause(0.15)
    steps = st.builds(
        Step,
        op=st.sampled_from(["try_set", "try_set", "get", "remove"]),
        uid=st.sampled_from(["a", "b"]),
        pod=st.sampled_from(PODS),
    )

    @settings(
        max_examples=40,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(
        st.lists(
            st.lists(steps, min_size=1, max_size=4), min_size=2, max_size=4
        )
    )
    def run(schedule: Schedule) -> None:
        history = run_schedule(
            pods, schedule, try_set=naive, uid_prefix=uuid.uuid4().hex[:6]
        )
        if not check_history(history).ok:
            failing.append(schedule)
            raise AssertionError("violation")

    with pytest.raises(AssertionError, match="violation"):
        run()
    # The last failing example hypothesis ran is its shrunk one: two
    # threads, one racing try_set each, on the same uid.
    smallest = failing[-1]
    assert len(smallest) == 2, smallest
    assert sum(len(thread) for thread in smallest) == 2, smallest
    assert all(thread[0].op == "try_set" for thread in smallest)
