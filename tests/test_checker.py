"""The checker on hand-written histories (pure units: no etcd needed).

Every history here is small enough to judge by hand; each test says why
it is or is not linearizable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from etcdroute.checker import (
    SearchTimeout,
    check_agreement,
    check_history,
    check_revision_order,
    check_single_owner,
    is_linearizable,
    shrink_failure,
)
from etcdroute.history import Operation


def op(
    process: str,
    name: str,
    invoke: float,
    complete: float | None,
    outcome: str = "ok",
    *,
    pod: int | None = None,
    uid: str = "u",
    result: dict[str, Any] | None = None,
) -> Operation:
    """A validated operation (``result`` is kept for ``ok`` only)."""
    made = Operation(
        process,
        name,
        uid,
        pod,
        invoke,
        complete,
        outcome,
        result if outcome == "ok" else None,
    )
    made.validate()
    return made


def try_set(
    p: str,
    t0: float,
    t1: float | None,
    pod: int,
    *,
    got: int | None = None,
    created: bool | None = None,
    rev: int | None = None,
    outcome: str = "ok",
    uid: str = "u",
) -> Operation:
    if outcome != "ok":
        return op(p, "try_set", t0, t1, outcome, pod=pod, uid=uid)
    return op(
        p,
        "try_set",
        t0,
        t1,
        pod=pod,
        uid=uid,
        result={"pod": got, "created": created, "revision": rev},
    )


def set_(
    p: str,
    t0: float,
    t1: float | None,
    pod: int,
    *,
    created: bool = False,
    rev: int = 0,
    outcome: str = "ok",
    uid: str = "u",
) -> Operation:
    if outcome != "ok":
        return op(p, "set", t0, t1, outcome, pod=pod, uid=uid)
    return op(
        p,
        "set",
        t0,
        t1,
        pod=pod,
        uid=uid,
        result={"pod": pod, "created": created, "revision": rev},
    )


def get(
    p: str,
    t0: float,
    t1: float,
    got: int | None,
    rev: int | None = None,
    uid: str = "u",
) -> Operation:
    return op(p, "get", t0, t1, uid=uid, result={"pod": got, "revision": rev})


def remove(
    p: str,
    t0: float,
    t1: float | None,
    removed: bool = True,
    *,
    outcome: str = "ok",
    uid: str = "u",
) -> Operation:
    if outcome != "ok":
        return op(p, "remove", t0, t1, outcome, uid=uid)
    return op(p, "remove", t0, t1, uid=uid, result={"removed": removed})


def remove_id(
    p: str,
    t0: float,
    t1: float | None,
    pod: int,
    removed: bool = True,
    *,
    outcome: str = "ok",
    uid: str = "u",
) -> Operation:
    if outcome != "ok":
        return op(p, "remove_with_id", t0, t1, outcome, pod=pod, uid=uid)
    return op(
        p,
        "remove_with_id",
        t0,
        t1,
        pod=pod,
        uid=uid,
        result={"removed": removed},
    )


# ------------------------------------------------------- linearizable


def test_empty_history_is_linearizable() -> None:
    result = check_history([])
    assert result.ok and result.operations == 0 and result.uids == 0


def test_sequential_register_is_linearizable() -> None:
    history = [
        get("a", 0, 1, None),
        try_set("a", 2, 3, 1, got=1, created=True, rev=10),
        try_set("b", 4, 5, 2, got=1, created=False, rev=10),
        set_("b", 6, 7, 2, created=False, rev=11),
        get("a", 8, 9, 2, 11),
        remove_id("a", 10, 11, 1, removed=False),
        remove_id("a", 12, 13, 2, removed=True),
        remove("b", 14, 15, removed=False),
        set_("b", 16, 17, 3, created=True, rev=14),
    ]
    assert is_linearizable(history)
    assert check_history(history).ok


def test_racing_try_sets_with_one_winner_are_linearizable() -> None:
    # All overlap; the one that created is linearized first.
    history = [
        try_set("a", 0, 10, 1, got=2, created=False, rev=5),
        try_set("b", 1, 9, 2, got=2, created=True, rev=5),
        try_set("c", 2, 8, 3, got=2, created=False, rev=5),
    ]
    assert check_history(history).ok


def test_overlap_allows_reordering() -> None:
    # The get overlaps the try_set, so it may be ordered after it even
    # though it was invoked first.
    history = [
        get("a", 0, 10, 1, 7),
        try_set("b", 2, 5, 1, got=1, created=True, rev=7),
    ]
    assert is_linearizable(history)


def test_failed_calls_are_ignored() -> None:
    history = [
        try_set("a", 0, 1, 1, outcome="fail"),
        get("b", 2, 3, None),
    ]
    assert check_history(history).ok


def test_uids_are_independent() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=3, uid="x"),
        try_set("b", 0, 1, 2, got=2, created=True, rev=4, uid="y"),
    ]
    assert check_history(history).ok


# ----------------------------------------------------- not linearizable


def test_two_creators_are_caught() -> None:
    # The naive read-then-write outcome: both "created", overlapping.
    history = [
        try_set("a", 0, 10, 1, got=1, created=True, rev=5),
        try_set("b", 1, 11, 2, got=2, created=True, rev=6),
    ]
    result = check_history(history)
    assert result.failed_uids("linearizability") == {"u"}
    assert result.failed_uids("agreement") == {"u"}


def test_stale_read_after_completed_write_is_caught() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        get("b", 2, 3, None),
    ]
    assert not is_linearizable(history)


def test_read_of_a_value_never_written_is_caught() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        get("b", 2, 3, 1, 6),  # right pod, wrong revision
    ]
    assert not is_linearizable(history)


def test_lost_update_is_caught() -> None:
    # set to 2 completed, then a read still sees pod 1.
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        set_("b", 2, 3, 2, created=False, rev=6),
        get("c", 4, 5, 1, 5),
    ]
    assert not is_linearizable(history)


def test_set_created_flag_is_checked() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        set_("b", 2, 3, 2, created=True, rev=6),
    ]
    assert not is_linearizable(history)


def test_remove_with_id_of_wrong_pod_must_not_remove() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove_id("b", 2, 3, 2, removed=True),
    ]
    assert not is_linearizable(history)
    history[1] = remove_id("b", 2, 3, 1, removed=False)
    assert not is_linearizable(history)


def test_remove_reports_whether_a_link_existed() -> None:
    assert not is_linearizable([remove("a", 0, 1, removed=True)])
    assert is_linearizable([remove("a", 0, 1, removed=False)])


def test_real_time_order_is_respected() -> None:
    # b's get completes before a's try_set is invoked, so b cannot see it.
    history = [
        get("b", 0, 1, 1, 5),
        try_set("a", 2, 3, 1, got=1, created=True, rev=5),
    ]
    assert not is_linearizable(history)


# --------------------------------------------------------- unknown ops


def test_unknown_write_may_take_effect_late() -> None:
    # The timed-out try_set "completed" at 1 but took effect after the
    # first get; both gets are explained.
    history = [
        try_set("a", 0, 1, 1, outcome="unknown"),
        get("b", 2, 3, None),
        get("b", 4, 5, 1, 9),
    ]
    assert is_linearizable(history)


def test_unknown_write_may_never_take_effect() -> None:
    history = [
        set_("a", 0, None, 2, outcome="unknown"),
        get("b", 2, 3, None),
        get("b", 4, 5, None),
    ]
    assert is_linearizable(history)


def test_unknown_write_cannot_act_before_its_invocation() -> None:
    history = [
        get("b", 0, 1, 1, 9),
        try_set("a", 2, None, 1, outcome="unknown"),
    ]
    assert not is_linearizable(history)


def test_unknown_write_takes_effect_at_most_once() -> None:
    # An unknown remove can explain one vanishing, not two.
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove("x", 2, None, outcome="unknown"),
        get("b", 3, 4, None),
        try_set("a", 5, 6, 1, got=1, created=True, rev=8),
        get("b", 7, 8, None),
    ]
    assert not is_linearizable(history)
    # Remove the last read and it is fine.
    assert is_linearizable(history[:-1])


def test_unknown_write_revision_is_fixed_by_the_first_read() -> None:
    history = [
        set_("a", 0, None, 2, outcome="unknown"),
        get("b", 2, 3, 2, 9),
        get("b", 4, 5, 2, 10),  # same pod, but another revision
    ]
    assert not is_linearizable(history)
    assert is_linearizable(history[:2])


def test_unknown_get_carries_no_information() -> None:
    history = [
        op("a", "get", 0, None, "unknown"),
        try_set("a", 1, 2, 1, got=1, created=True, rev=5),
    ]
    assert is_linearizable(history)


def test_unknown_remove_with_id_only_removes_its_pod() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove_id("x", 2, None, 2, outcome="unknown"),
        get("b", 3, 4, None),
    ]
    assert not is_linearizable(history)


# --------------------------------------------------------- shrinking


def test_violation_is_shrunk_to_a_minimal_sub_history() -> None:
    # A long clean prefix, then one stale read.
    history = []
    t = 0.0
    for round_ in range(20):
        history.append(
            try_set("a", t, t + 1, 1, got=1, created=True, rev=10 + 2 * round_)
        )
        # Odd revisions are the removes'.
        history.append(get("b", t + 2, t + 3, 1, 10 + 2 * round_))
        history.append(remove("a", t + 4, t + 5, removed=True))
        t += 6
    stale = get("b", t, t + 1, 1, 10)  # a link that was removed long ago
    history.append(stale)

    result = check_history(history)
    # The stale read also breaks revision order (checked on its own).
    (order,) = [v for v in result.violations if v.kind == "revision-order"]
    assert stale in order.operations
    (violation,) = [
        v for v in result.violations if v.kind == "linearizability"
    ]
    assert violation.minimal
    assert stale in violation.operations
    assert len(violation.operations) <= 3
    # 1-minimal: dropping any single operation makes it pass.
    # The evidence starts after a quiet moment, with the register in any
    # state: the last remove, then the stale read.
    assert violation.start == "in any state"
    evidence = list(violation.operations)
    assert [o.op for o in evidence] == ["remove", "get"]
    assert not is_linearizable(evidence, start_any=True)
    for index in range(len(evidence)):
        rest = evidence[:index] + evidence[index + 1 :]
        assert is_linearizable(rest, start_any=True)
    text = violation.describe()
    assert "linearizability violation on uid 'u'" in text
    assert "b: get('u') -> pod 1 @10" in text


def test_shrink_respects_its_budget() -> None:
    history = [
        try_set("a", 0, 10, 1, got=1, created=True, rev=5),
        try_set("b", 1, 11, 2, got=2, created=True, rev=6),
        get("c", 20, 21, None),
    ]
    subset, minimal = shrink_failure(
        history, lambda ops: not is_linearizable(ops), budget=1
    )
    assert not minimal and len(subset) <= 3


# ---------------------------------------------------------- G2 and G1


def test_agreement_ignores_groups_disturbed_by_other_writes() -> None:
    # A remove inside the race window explains two creators.
    history = [
        try_set("a", 0, 10, 1, got=1, created=True, rev=5),
        remove("c", 2, 4, removed=True),
        try_set("b", 5, 11, 2, got=2, created=True, rev=6),
    ]
    assert check_agreement(history) == []
    assert is_linearizable(history)


def test_agreement_flags_different_answers() -> None:
    history = [
        try_set("a", 0, 10, 1, got=1, created=False, rev=5),
        try_set("b", 1, 11, 2, got=2, created=False, rev=6),
    ]
    (violation,) = check_agreement(history)
    assert "pods [1, 2]" in violation.message


def test_single_owner_flags_two_pods_at_one_revision() -> None:
    history = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        get("b", 2, 3, 2, 5),
    ]
    (violation,) = check_single_owner(history)
    assert violation.kind == "single-owner"
    assert not check_history(history).ok


@pytest.mark.parametrize("processes", [2, 4, 8])
def test_many_overlapping_ops_stay_fast(processes: int) -> None:
    # Every process does the same sequence in lock-step overlap: a hard
    # case without memoization (factorial orders), easy with it.
    history = []
    for step in range(30):
        base = step * 10.0
        revision = 2 * step + 1  # even revisions are the removes'
        writer = try_set(
            "p0", base, base + 5, 1, got=1, created=True, rev=revision
        )
        history.append(writer)
        for index in range(1, processes):
            history.append(
                get(f"p{index}", base + 0.5, base + 5.5, 1, revision)
            )
        history.append(remove("p0", base + 6, base + 7, removed=True))
    result = check_history(history)
    assert result.ok and result.elapsed < 30


def test_failure_deep_in_a_long_contended_history_is_found_fast() -> None:
    # 4 processes hammer one uid with overlapping reads of a link that
    # changes owner every round; a single stale read near the end.
    history = []
    for step in range(150):
        base = step * 10.0
        history.append(
            set_(
                "w", base, base + 4, step % 3, created=step == 0, rev=step + 1
            )
        )
        for reader in range(3):
            history.append(
                get(
                    f"r{reader}",
                    base + 1 + reader,
                    base + 6 + reader,
                    step % 3,
                    step + 1,
                )
            )
    stale = get("late", 1400.5, 1400.9, 0, 1)  # round 0's link, long gone
    history.append(stale)

    result = check_history(history)
    assert result.failed_uids("revision-order") == {"u"}
    (violation,) = [
        v for v in result.violations if v.kind == "linearizability"
    ]
    assert stale in violation.operations
    assert len(violation.operations) <= 3, violation.describe()
    assert result.elapsed < 30
    assert is_linearizable([op for op in history if op is not stale])


# ------------------------------------------------------- revision order


def _order_kinds(ops: list[Operation]) -> list[str]:
    """Messages of the revision-order violations alone."""
    return [v.message for v in check_revision_order(ops)]


def test_revision_order_passes_growing_revisions() -> None:
    # Create @5, remove, re-create @9, read @9: revisions grow with time.
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove("b", 2, 3),
        try_set("c", 4, 5, 2, got=2, created=True, rev=9),
        get("d", 6, 7, 2, 9),
    ]
    assert _order_kinds(ops) == []
    assert check_history(ops).ok


def test_rule_a_two_writes_never_share_a_revision() -> None:
    # @10, remove, @10 again: the second write reuses a revision.
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=10),
        remove("b", 2, 3),
        try_set("c", 4, 5, 1, got=1, created=True, rev=10),
    ]
    result = check_history(ops)
    assert "revision-order" in {v.kind for v in result.violations}
    assert any("2 different writes" in m for m in _order_kinds(ops))


def test_rule_b_a_later_write_has_a_larger_revision() -> None:
    # try_set creates @10, remove, a new try_set creates @5: impossible,
    # yet the register model (equality only) explains it.
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=10),
        remove("b", 2, 3),
        try_set("c", 4, 5, 2, got=2, created=True, rev=5),
    ]
    assert is_linearizable(ops)
    messages = _order_kinds(ops)
    assert messages and "below revision 10" in messages[0]
    assert not check_history(ops).ok


def test_rule_b_passes_overlapping_writes_in_any_order() -> None:
    # Two sets that overlap may commit in either order.
    ops = [
        set_("a", 0, 3, 1, created=True, rev=8),
        set_("b", 1, 2, 2, rev=7),
    ]
    assert _order_kinds(ops) == []


def test_rule_c_a_read_never_goes_back_in_revisions() -> None:
    # An unknown set, then a set @20 completes, then a get sees @3.
    ops = [
        set_("c", 0, None, 1, outcome="unknown"),
        set_("a", 1, 2, 2, created=True, rev=20),
        get("d", 5, 6, 1, 3),
    ]
    assert is_linearizable(ops)
    messages = _order_kinds(ops)
    assert (
        messages and "reports revision 3, below revision 20" in (messages[0])
    )


def test_rule_c_passes_absent_reads_and_reads_of_the_same_write() -> None:
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=20),
        get("b", 2, 3, 1, 20),
        try_set("c", 4, 5, 2, got=1, created=False, rev=20),
        remove("d", 6, 7),
        get("e", 8, 9, None),
    ]
    assert _order_kinds(ops) == []


def test_rule_c_covers_try_set_that_found_a_link() -> None:
    ops = [
        set_("c", 0, None, 1, outcome="unknown"),
        set_("a", 1, 2, 2, created=True, rev=20),
        try_set("b", 3, 4, 3, got=1, created=False, rev=4),
    ]
    assert _order_kinds(ops)


def test_rule_d_a_read_after_a_remove_sees_a_newer_link() -> None:
    # Create @5, remove, an unknown set, a get of @5: the unknown set
    # would have made a revision above the remove's, so @5 is stale.
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove("b", 2, 3),
        set_("c", 4, None, 1, outcome="unknown"),
        get("d", 5, 6, 1, 5),
    ]
    assert is_linearizable(ops)
    messages = _order_kinds(ops)
    assert messages and "not above 6" in messages[0]


def test_rule_d_passes_a_newer_link_and_a_remove_of_nothing() -> None:
    ops = [
        try_set("a", 0, 1, 1, got=1, created=True, rev=5),
        remove("b", 2, 3),
        set_("c", 4, None, 1, outcome="unknown"),
        get("d", 5, 6, 1, 7),
    ]
    assert _order_kinds(ops) == []
    # A remove that removed nothing made no revision: no floor from it.
    quiet = [
        remove("b", 0, 1, removed=False),
        try_set("a", 2, 3, 1, got=1, created=True, rev=1),
    ]
    assert _order_kinds(quiet) == []


def test_revision_order_ignores_calls_of_unknown_outcome() -> None:
    ops = [
        try_set("a", 0, 1, 1, outcome="unknown"),
        remove("b", 2, 3, outcome="unknown"),
        try_set("c", 4, 5, 2, got=2, created=True, rev=1),
    ]
    assert _order_kinds(ops) == []


# ------------------------------------------------------------- budget


def _unknown_sets_and_an_impossible_read(count: int) -> list[Operation]:
    """Many sets of unknown outcome, then a read no set can explain.

    The search must try every subset and order of the sets before it may
    say no: exponential in ``count``.
    """
    ops = [
        set_(f"w{i}", i * 0.001, None, i, outcome="unknown")
        for i in range(count)
    ]
    ops.append(get("r", 1.0, 1.1, 999, 7))
    return ops


def test_a_slow_uid_is_inconclusive_not_passing() -> None:
    ops = _unknown_sets_and_an_impossible_read(20)
    ops.append(set_("x", 0, 1, 1, created=True, rev=3, uid="easy"))
    started = time.perf_counter()
    result = check_history(ops, max_seconds_per_uid=0.2)
    assert time.perf_counter() - started < 5
    assert result.inconclusive == ("u",)
    assert not result.ok and not result.conclusive
    assert not result.violations
    assert "INCONCLUSIVE" in result.describe()


def test_a_fast_uid_is_conclusive_under_the_budget() -> None:
    result = check_history(
        _unknown_sets_and_an_impossible_read(3), max_seconds_per_uid=5
    )
    assert result.conclusive
    assert result.failed_uids("linearizability") == {"u"}


def test_shrinking_stops_when_a_search_runs_out_of_time() -> None:
    ops = [get(f"p{i}", i, i + 0.5, None) for i in range(8)]
    calls = []

    def slow(candidate: Sequence[Operation]) -> bool:
        calls.append(len(candidate))
        raise SearchTimeout

    subset, minimal = shrink_failure(ops, slow)
    assert subset == ops and not minimal and len(calls) == 1
