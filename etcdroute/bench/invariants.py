"""Judge a variant's run: ownership invariants over its history and etcd.

Until the history checker (``etcdroute.checker``, a full
linearizability check) is wired in, two necessary conditions are checked
here. Both can only flag real violations: whenever the recorded timing
leaves room for an innocent order, they stay silent.

``double-create``
    Two ``try_set`` calls on one uid were both told "you created the
    link", and no removal (``remove`` / ``remove_with_id`` that reported
    a removal, or whose outcome is unknown) could have happened between
    them. Each caller believes it owns the uid: the fault that G2 forbids.
``final-state``
    The link etcd holds at the end is none of the values the history
    allows: the value of a write not definitely followed by another
    completed write, or absent if no write surely took effect. A caller
    was told an owner that silently changed (a lost update).
``foreign-value``
    A link names a pod that is not one of the run's pods.

Known shortcoming: links expire with their pod's lease; the check
assumes no pod lease ends during the run (the harness keeps the pods
registered until the final read).

:func:`checker_verdict` runs the history checker (etcdroute.checker) on the
same operations; both verdicts decide the run.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from etcdroute.checker import check_history
from etcdroute.history import Operation

logger = logging.getLogger(__name__)

Op = dict[str, Any]

_REMOVALS = ("remove", "remove_with_id")


@dataclass(frozen=True)
class Violation:
    """One broken invariant, on one uid."""

    kind: str
    uid: str
    detail: str


def checker_verdict(ops: list[Op]) -> dict[str, Any]:
    """The history checker's verdict on ``ops`` (G1, G2, G3 per uid).

    Reported next to the invariant counts below and deciding the run like
    them. Shrinking is skipped: the report needs the count and kinds of
    violations, not minimal sub-histories (``etcdroute check`` on the
    saved history gives those).
    """
    result = check_history(
        (Operation.from_json(op) for op in ops), shrink=False
    )
    kinds = Counter(violation.kind for violation in result.violations)
    return {
        "ok": result.ok,
        "violations": len(result.violations),
        "kinds": dict(sorted(kinds.items())),
        "seconds": round(result.elapsed, 3),
    }


def check_run(
    ops: list[Op], final_links: Mapping[str, int | None], pods: Iterable[int]
) -> list[Violation]:
    """Every invariant violation of one run (see the module docstring)."""
    by_uid: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_uid[op["uid"]].append(op)
    known_pods = set(pods)
    found: list[Violation] = []
    for uid in sorted(set(by_uid) | set(final_links)):
        history = by_uid.get(uid, [])
        found.extend(_double_creations(uid, history))
        final = final_links.get(uid)
        if final is not None and final not in known_pods:
            found.append(
                Violation("foreign-value", uid, f"links to pod {final}")
            )
        allowed = _possible_finals(history)
        if final not in allowed:
            shown = sorted(allowed, key=lambda p: -1 if p is None else p)
            found.append(
                Violation(
                    "final-state",
                    uid,
                    f"etcd holds {final}; history allows only {shown}",
                )
            )
    return found


def _end(op: Op) -> float:
    """When an operation surely stopped acting (never, if unknown)."""
    if op["outcome"] == "unknown" or op.get("complete") is None:
        return math.inf
    complete: float = op["complete"]
    return complete


def _created(op: Op) -> bool:
    return bool(
        op["op"] == "try_set"
        and op["outcome"] == "ok"
        and op["result"]["created"]
    )


def _may_remove(op: Op) -> bool:
    if op["op"] not in _REMOVALS:
        return False
    if op["outcome"] == "unknown":
        return True
    return bool(op["outcome"] == "ok" and op["result"]["removed"])


def _double_creations(uid: str, history: list[Op]) -> list[Violation]:
    claims = sorted(
        (op for op in history if _created(op)), key=lambda op: op["invoke"]
    )
    if len(claims) < 2:
        return []

    # Removals sorted by start, with the running maximum of their ends:
    # "some removal started before t1 and ended after t0" is one lookup.
    removals = sorted(
        (op for op in history if _may_remove(op)), key=lambda op: op["invoke"]
    )
    starts = [op["invoke"] for op in removals]
    latest_end: list[float] = []
    for op in removals:
        latest_end.append(max(_end(op), latest_end[-1] if latest_end else 0))

    def removal_between(before: Op, after: Op) -> bool:
        # Some removal started before ``after`` ended and ended after
        # ``before`` started: it may sit between them.
        count = bisect.bisect_left(starts, _end(after))
        return bool(count) and latest_end[count - 1] > before["invoke"]

    # Either order of the two claims is possible when they overlap; only
    # when neither order leaves room for a removal is this a violation.
    found = []
    for first, second in itertools.pairwise(claims):
        if removal_between(first, second) or removal_between(second, first):
            continue
        found.append(
            Violation(
                "double-create",
                uid,
                f"{first['process']} (pod {first['pod']}) and "
                f"{second['process']} (pod {second['pod']}) were both "
                "told they created the link, with no removal between",
            )
        )
    return found


def _writes(history: list[Op]) -> list[tuple[Op, int | None]]:
    """Operations that may have changed the link, with the value written."""
    found: list[tuple[Op, int | None]] = []
    for op in history:
        kind, outcome = op["op"], op["outcome"]
        if outcome == "fail":
            continue
        if kind == "set" or (
            kind == "try_set" and (outcome == "unknown" or _created(op))
        ):
            found.append((op, op["pod"]))
        elif _may_remove(op):
            found.append((op, None))
    return found


def _possible_finals(history: list[Op]) -> set[int | None]:
    writes = _writes(history)
    definite = [op for op, _ in writes if op["outcome"] == "ok"]
    last_start = max((op["invoke"] for op in definite), default=-math.inf)
    allowed: set[int | None] = {
        value for op, value in writes if _end(op) >= last_start
    }
    if not definite:
        allowed.add(None)
    return allowed


def summarize(violations: list[Violation]) -> dict[str, int]:
    """Count violations by kind."""
    counts: dict[str, int] = defaultdict(int)
    for violation in violations:
        counts[violation.kind] += 1
    return dict(counts)
