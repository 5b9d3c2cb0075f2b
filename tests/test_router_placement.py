"""Placement policies (pure functions of uid and loads) and the pod table.

The policies touch no I/O, so they are checked on simulated tables; the
router tests check them on a real etcd.
"""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdroute import (
    BoundedLoadHashing,
    InvalidArgumentError,
    PowerOfTwoChoices,
)
from etcdroute.placement import RandomPlacement


def place(policy: object, loads: dict[int, int], uids: int) -> dict[int, int]:
    loads = dict(loads)
    for index in range(uids):
        chosen = policy.choose(f"uid-{index}", loads)  # type: ignore[attr-defined]
        loads[chosen] += 1
    return loads


def max_over_mean(loads: dict[int, int]) -> float:
    return max(loads.values()) / statistics.fmean(loads.values())


UNEVEN = {pod: pod * 300 for pod in range(10)}


@pytest.mark.parametrize(
    "policy",
    [PowerOfTwoChoices(random.Random(1)), BoundedLoadHashing(1.05)],
    ids=["p2c", "bounded"],
)
def test_policies_level_uneven_reports(policy: object) -> None:
    balanced = place(policy, UNEVEN, 20_000)
    baseline = place(RandomPlacement(random.Random(1)), UNEVEN, 20_000)
    assert max_over_mean(balanced) <= 1.10
    assert max_over_mean(baseline) > max_over_mean(balanced) + 0.05


def test_bounded_hashing_is_stable_while_under_capacity() -> None:
    policy = BoundedLoadHashing(1.25)
    loads = dict.fromkeys(range(8), 100)
    first = {f"u{i}": policy.choose(f"u{i}", loads) for i in range(200)}
    again = BoundedLoadHashing(1.25)
    assert {u: again.choose(u, loads) for u in first} == first
    # Removing one pod moves only the uids that were on it.
    without = {pod: 100 for pod in range(8) if pod != 3}
    moved = {u for u, pod in first.items() if again.choose(u, without) != pod}
    assert moved == {u for u, pod in first.items() if pod == 3}


def test_bounded_hashing_skips_full_pods() -> None:
    policy = BoundedLoadHashing(1.1)
    loads = {1: 1000, 2: 0, 3: 0}
    assert {policy.choose(f"u{i}", loads) for i in range(50)} <= {2, 3}


@settings(max_examples=60, deadline=None)
@given(
    loads=st.dictionaries(
        st.integers(0, 50), st.integers(0, 10_000), min_size=1, max_size=12
    ),
    uid=st.text(min_size=1, max_size=20),
)
def test_policies_always_return_a_candidate(
    loads: dict[int, int], uid: str
) -> None:
    for policy in (
        PowerOfTwoChoices(),
        BoundedLoadHashing(),
        RandomPlacement(),
    ):
        assert policy.choose(uid, loads) in loads


def test_power_of_two_prefers_the_less_loaded() -> None:
    policy = PowerOfTwoChoices(random.Random(2))
    assert {policy.choose("u", {1: 5, 2: 9}) for _ in range(50)} == {1}
    assert policy.choose("u", {7: 100}) == 7


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"balance": 1.0}, "balance"),
        ({"balance": "x"}, "balance"),
        ({"replicas": 0}, "replicas"),
    ],
)
def test_bad_policy_arguments(
    kwargs: dict[str, object], argument: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        BoundedLoadHashing(**kwargs)  # type: ignore[arg-type]
    assert caught.value.argument == argument


def test_no_candidates_is_an_error() -> None:
    for policy in (PowerOfTwoChoices(), BoundedLoadHashing()):
        with pytest.raises(InvalidArgumentError):
            policy.choose("u", {})
