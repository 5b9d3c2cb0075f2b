"""Units of the benchmark that need no etcd: workloads, figures, checks."""

from __future__ import annotations

import collections
import random

import pytest

from etcdroute.bench.invariants import check_run, summarize
from etcdroute.bench.metrics import percentile, run_figures
from etcdroute.bench.workload import (
    OPERATIONS,
    Workload,
    ZipfianRanks,
    parse_mix,
)
from etcdroute.errors import InvalidArgumentError

# ---------------------------------------------------------- workloads


def test_zipfian_ranks_follow_the_law() -> None:
    items, theta, draws = 1000, 0.99, 200_000
    ranks = ZipfianRanks(items, theta, random.Random(3))
    counts = collections.Counter(ranks.next() for _ in range(draws))
    assert min(counts) >= 0 and max(counts) < items
    norm = sum(1 / (i**theta) for i in range(1, items + 1))
    # The two hottest ranks are exact in Gray's method; the tail is an
    # approximation, so compare the head tightly and the tail loosely.
    for rank in (0, 1):
        expected = draws / ((rank + 1) ** theta) / norm
        assert abs(counts[rank] - expected) < 0.05 * expected
    top_ten = sum(counts[r] for r in range(10)) / draws
    expected_top = sum(1 / (i**theta) for i in range(1, 11)) / norm
    assert abs(top_ten - expected_top) < 0.05


def test_zipfian_skew_zero_is_uniform() -> None:
    ranks = ZipfianRanks(10, 0.0, random.Random(1))
    counts = collections.Counter(ranks.next() for _ in range(50_000))
    assert set(counts) == set(range(10))
    assert max(counts.values()) < 1.1 * min(counts.values())


def test_hotkey_sends_the_hot_fraction_to_the_hot_set() -> None:
    workload = Workload("hotkey", keys=1000, hot_keys=8, hot_fraction=0.9)
    stream = workload.stream(0, [0, 1])
    ranks = [stream.rank() for _ in range(20_000)]
    hot = sum(rank < 8 for rank in ranks) / len(ranks)
    assert 0.88 < hot < 0.92
    assert max(ranks) > 8


def test_streams_are_reproducible_and_distinct() -> None:
    workload = Workload("uniform", keys=10_000, seed=5)
    first = [workload.stream(0, [0, 1, 2]).next() for _ in range(3)]
    again = [workload.stream(0, [0, 1, 2]).next() for _ in range(3)]
    assert first == again
    one, two = workload.stream(0, [1, 2]), workload.stream(1, [1, 2])
    assert [one.next() for _ in range(20)] != [two.next() for _ in range(20)]


def test_op_mix_is_respected() -> None:
    workload = Workload("uniform", mix=parse_mix("try_set=3,get=1"))
    stream = workload.stream(0, [7])
    ops = collections.Counter(stream.next()[0] for _ in range(8000))
    assert set(ops) == {"try_set", "get"}
    assert 2.6 < ops["try_set"] / ops["get"] < 3.4
    assert stream.next()[2] == 7


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"distribution": "pareto"}, "distribution"),
        ({"keys": 0}, "keys"),
        ({"skew": 1.0}, "skew"),
        ({"skew": -0.1}, "skew"),
        ({"hot_keys": 0}, "hot_keys"),
        ({"keys": 5, "hot_keys": 6}, "hot_keys"),
        ({"hot_fraction": 1.5}, "hot_fraction"),
        ({"mix": {"try_set": -1.0}}, "mix"),
        ({"mix": {"get": 0.0}}, "mix"),
        ({"mix": {"frobnicate": 1.0}}, "mix"),
    ],
)
def test_bad_workloads_name_the_argument(
    kwargs: dict[str, object], argument: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Workload(**kwargs)  # type: ignore[arg-type]
    assert caught.value.argument == argument


@pytest.mark.parametrize("text", ["try_set", "put=3", "get=x", "get=0"])
def test_bad_mix_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_mix(text)
    assert caught.value.argument == "mix"


def test_parse_mix_fills_unnamed_ops_with_zero() -> None:
    mix = parse_mix("set=1, remove=2")
    assert set(mix) == set(OPERATIONS)
    assert mix["set"] == 1.0 and mix["remove"] == 2.0 and mix["get"] == 0.0


# ------------------------------------------------------------ figures


def _op(
    process: str,
    op: str,
    uid: str,
    invoke: float,
    complete: float | None,
    result: dict[str, object] | None = None,
    pod: int | None = None,
    outcome: str = "ok",
) -> dict[str, object]:
    return {
        "process": process,
        "op": op,
        "uid": uid,
        "pod": pod,
        "invoke": invoke,
        "complete": complete,
        "outcome": outcome,
        "result": result,
    }


def _created(
    process: str, uid: str, pod: int, start: float, end: float
) -> dict[str, object]:
    return _op(
        process,
        "try_set",
        uid,
        start,
        end,
        {"pod": pod, "created": True, "revision": 1},
        pod,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile([], 0.5) == 0.0


def test_run_figures_count_conflicts_and_errors() -> None:
    ops = [
        _created("a", "u", 1, 0.0, 0.002),
        _op(
            "b",
            "try_set",
            "u",
            0.0,
            0.004,
            {"pod": 1, "created": False, "revision": 1},
            2,
        ),
        _op("c", "remove_with_id", "u", 0.0, 0.001, {"removed": False}, 3),
        _op("d", "get", "u", 0.0, 0.5, outcome="unknown"),
    ]
    figures = run_figures(ops, wall=2.0)
    assert figures["completed"] == 3
    assert figures["throughput"] == 1.5
    assert figures["try_set_throughput"] == 1.0
    assert figures["conflicts"] == 2
    assert figures["errors"] == 1
    assert figures["p50_ms"] == pytest.approx(2.0)


# --------------------------------------------------------- invariants


def test_two_creators_without_removal_are_a_violation() -> None:
    ops = [_created("a", "u", 1, 0.0, 1.0), _created("b", "u", 2, 0.5, 1.5)]
    violations = check_run(ops, {"u": 2}, [1, 2])
    assert summarize(violations) == {"double-create": 1}
    assert "a (pod 1)" in violations[0].detail


def test_a_removal_between_two_creators_is_fine_in_either_order() -> None:
    # b's claim ends before the removal starts; a's claim starts first but
    # may take effect last: b, removal, a is a legal order.
    ops = [
        _created("a", "u", 1, 0.0, 3.0),
        _created("b", "u", 2, 0.5, 1.0),
        _op("c", "remove", "u", 1.5, 2.0, {"removed": True}),
    ]
    assert check_run(ops, {"u": 1}, [1, 2]) == []


def test_an_unknown_removal_may_explain_a_second_creator() -> None:
    ops = [
        _created("a", "u", 1, 0.0, 1.0),
        _op("c", "remove_with_id", "u", 0.2, None, pod=1, outcome="unknown"),
        _created("b", "u", 2, 5.0, 6.0),
    ]
    assert check_run(ops, {"u": 2}, [1, 2]) == []


def test_final_state_must_be_a_value_the_history_allows() -> None:
    ops = [
        _created("a", "u", 1, 0.0, 1.0),
        _op("b", "remove", "u", 2.0, 3.0, {"removed": True}),
    ]
    assert check_run(ops, {}, [1, 2]) == []
    wrong = check_run(ops, {"u": 1}, [1, 2])
    assert summarize(wrong) == {"final-state": 1}
    untouched = check_run([], {"v": 1}, [1, 2])
    assert summarize(untouched) == {"final-state": 1}


def test_concurrent_writes_allow_either_final_value() -> None:
    ops = [
        _op(
            "a",
            "set",
            "u",
            0.0,
            2.0,
            {"pod": 1, "created": True, "revision": 1},
            1,
        ),
        _op(
            "b",
            "set",
            "u",
            1.0,
            3.0,
            {"pod": 2, "created": False, "revision": 2},
            2,
        ),
    ]
    assert check_run(ops, {"u": 1}, [1, 2]) == []
    assert check_run(ops, {"u": 2}, [1, 2]) == []
    assert summarize(check_run(ops, {}, [1, 2])) == {"final-state": 1}


def test_a_link_to_an_unknown_pod_is_flagged() -> None:
    ops = [
        _op(
            "a",
            "set",
            "u",
            0.0,
            1.0,
            {"pod": 9, "created": True, "revision": 1},
            9,
        )
    ]
    assert summarize(check_run(ops, {"u": 9}, [1, 2])) == {"foreign-value": 1}
