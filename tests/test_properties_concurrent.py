"""Concurrent link calls on a real etcd, recorded and checked.

Hypothesis generates per-thread schedules over a few hot uids and pods;
the threads start together and run them through real drivers. The
recorded history must pass the checker (G1 single owner per revision,
G2 agreement of racing try_sets, G3 linearizability) and every link made
must have gone to a pod registered, and for try_set accepting, at the
revision of the link as etcd recorded it (G4).

A failing schedule shrinks like any hypothesis example; the report then
shows the schedule, the checker's minimal failing sub-history and the
recorded history.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schedules import LINK_OPS, STATE_OPS, Schedule, Step, judge, run_schedule

from etcdroute import RoutingState, ServerDriver

PODS = (1, 2, 3)
HOT_UIDS = ("hot-a", "hot-b", "hot/../c")

steps = st.builds(
    Step,
    op=st.sampled_from(LINK_OPS + LINK_OPS[:1] * 3 + STATE_OPS),
    uid=st.sampled_from(HOT_UIDS),
    pod=st.sampled_from(PODS),
)
schedules = st.lists(
    st.lists(steps, min_size=1, max_size=6), min_size=2, max_size=5
)

_examples = itertools.count()


@pytest.fixture
def pods(make_driver: Callable[..., ServerDriver]) -> dict[int, ServerDriver]:
    return {pod: make_driver(pod) for pod in PODS}


def describe_failure(
    schedule: Schedule, result: object, g4: list[str], history: list[object]
) -> str:
    lines = [f"schedule: {[list(t) for t in schedule]}"]
    lines.append(getattr(result, "describe", lambda: "")())
    lines += [f"G4: {problem}" for problem in g4]
    lines.append("history:")
    lines += [f"  {op.describe()}" for op in history]  # type: ignore[attr-defined]
    return "\n".join(lines)


@given(schedule=schedules)
def test_concurrent_schedules_keep_g1_to_g4(
    pods: dict[int, ServerDriver], schedule: Schedule
) -> None:
    # Every example starts from all pods accepting, on fresh uids.
    for driver in pods.values():
        driver.set_routing_state(RoutingState.ACCEPTING)
    prefix = f"x{next(_examples)}-"

    history = run_schedule(pods, schedule, uid_prefix=prefix)
    result, g4 = judge(pods[1], history)

    assert result.ok and not g4, describe_failure(
        schedule, result, g4, history
    )
    # The history is not trivial: every thread's calls are in it.
    link_calls = sum(s.op in LINK_OPS for t in schedule for s in t)
    finals = len({s.uid for t in schedule for s in t})
    assert len(history) == link_calls + finals
