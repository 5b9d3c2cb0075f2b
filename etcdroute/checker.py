"""Check a history of link operations against the link register model.

What is checked (DESIGN.md section 4):

* **G3 linearizability.** For every uid, there must be an order of its
  operations that respects real time (an operation that completed before
  another was invoked comes first) in which every operation's result is
  what a single register would answer. The register is either *absent* or
  *linked to pod p at revision r*:

  ========================  ==========================================
  try_set(p)                absent: link to p, created; linked: report
                            the owner and its revision, change nothing
  set(p)                    link to p; created iff it was absent
  remove                    unlink; removed iff it was linked
  remove_with_id(p)         unlink iff linked to p; removed says so
  get                       report the owner and revision, or absent
  ========================  ==========================================

  An operation with outcome ``fail`` changed nothing and is ignored. One
  with outcome ``unknown`` may take effect at any time after its
  invocation, or never; a ``get`` whose answer is unknown says nothing
  and is ignored. The revision a write of unknown outcome made is unknown
  too, so the first read that sees it fixes it.

* **G2 agreement.** Among ``try_set`` calls on one uid whose intervals
  overlap (a chain of overlaps), with no other write to that uid that may
  have taken effect meanwhile, all report the same pod at the same
  revision and at most one created the link. This follows from G3 too;
  it is checked on its own because its report is direct.

* **G1 single owner.** Two results that name the same uid and revision
  name the same pod.

* **Revision order.** etcd revisions are global and grow with real time,
  which the register model (comparing revisions for equality only) does
  not use. Per uid: two different ok writes never report the same
  revision; a write invoked after another ok write completed has a larger
  revision; a read (get, or a try_set that found a link) invoked after an
  ok write completed returns no smaller revision, or none at all. A
  remove that removed something, invoked after revision r was known,
  itself has a revision above r, so reads and writes invoked after it
  completed must show a revision above that. A cheap sweep, no search.

Budget: the search of one uid stops after ``max_seconds_per_uid``; that
uid is then reported *inconclusive* (neither passing nor failing), and
:attr:`CheckResult.ok` is False. Shrinking is bounded in calls and time.

How: linearizability is local (a history is linearizable iff each uid's
sub-history is), so each uid is searched on its own. The search is the
Wing and Gong depth-first search over a doubly linked list of call and
return events, with Lowe's memoization of (set of linearized operations,
register state): a configuration seen once is never explored again, which
keeps the search close to linear for real histories. A failing uid's
operations are then shrunk (delta debugging) to a 1-minimal subset that
still fails: removing any single operation from it makes it pass.

Known limit: a lease-bound link disappears when its owner's lease ends,
an effect no history operation records. Histories checked here must come
from runs where pods keep their leases (or links are persistent);
otherwise such a vanished link shows up as a violation.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from etcdroute.history import Operation

logger = logging.getLogger(__name__)

# Operation codes of the search (small ints are faster than text).
_TRY, _SET, _REMOVE, _REMOVE_ID, _GET = range(5)
_CODES: Final = {
    "try_set": _TRY,
    "set": _SET,
    "remove": _REMOVE,
    "remove_with_id": _REMOVE_ID,
    "get": _GET,
}
_WRITES: Final = frozenset({"set", "remove", "remove_with_id"})

#: A register state: None when absent, else ``(pod, revision)`` where the
#: revision is None while unknown (made by a call of unknown outcome).
State = tuple[int, int | None] | None


#: Marker state: the operation cannot take effect (compared by identity;
#: no real state has a negative pod).
_BAD: Final[State] = (-1, -1)

#: Marker state: anything (the start of a window cut out of a longer
#: history); the first operation that observes the register fixes it.
_ANY: Final[State] = (-2, -2)

#: Default budget of sub-history checks, and of seconds, spent on
#: shrinking the failure of one uid.
SHRINK_BUDGET: Final = 2000
SHRINK_SECONDS: Final = 5.0

#: Default seconds the linearizability search may spend on one uid
#: before that uid is reported inconclusive.
MAX_SECONDS_PER_UID: Final = 20.0


class SearchTimeout(Exception):
    """The search passed its deadline: no verdict either way."""


@dataclass(frozen=True)
class Violation:
    """One broken guarantee on one uid.

    ``operations`` is the evidence: for ``linearizability`` a failing
    sub-history (1-minimal when ``minimal``), for ``agreement`` the racing
    try_sets, for ``single-owner`` the results that disagree.
    """

    kind: str
    uid: str
    message: str
    operations: tuple[Operation, ...]
    minimal: bool = True
    start: str = "absent"

    def describe(self) -> str:
        """Readable multi-line text: what broke, then the operations."""
        start = min(op.invoke for op in self.operations)
        lines = [f"{self.kind} violation on uid {self.uid!r}: {self.message}"]
        lines += [
            "  " + op.describe(start) for op in _by_invoke(self.operations)
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check_history` found."""

    operations: int
    uids: int
    violations: tuple[Violation, ...]
    elapsed: float
    counts: dict[str, int] = field(default_factory=dict)
    #: Uids whose linearizability search ran out of time (no verdict).
    inconclusive: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No violation and every uid decided: only then is it a pass."""
        return not self.violations and not self.inconclusive

    @property
    def conclusive(self) -> bool:
        """Whether every uid got a verdict within its time budget."""
        return not self.inconclusive

    def failed_uids(self, kind: str | None = None) -> set[str]:
        return {
            v.uid for v in self.violations if kind is None or v.kind == kind
        }

    def describe(self) -> str:
        """A plain-text report (the CLI renders the same with rich)."""
        head = (
            f"{self.operations} operations on {self.uids} uids checked in "
            f"{self.elapsed:.3f} s: "
        )
        if self.ok:
            return head + "no violation"
        parts = []
        if self.violations:
            body = "\n".join(v.describe() for v in self.violations)
            parts.append(f"{len(self.violations)} violation(s)\n{body}")
        if self.inconclusive:
            names = ", ".join(map(repr, self.inconclusive))
            parts.append(
                f"INCONCLUSIVE on {len(self.inconclusive)} uid(s) (search "
                f"out of time): {names}"
            )
        return head + "\n".join(parts)


# --------------------------------------------------------------- driver


def check_history(
    operations: Iterable[Operation],
    *,
    shrink: bool = True,
    shrink_budget: int = SHRINK_BUDGET,
    max_seconds_per_uid: float = MAX_SECONDS_PER_UID,
) -> CheckResult:
    """Check G1, G2, G3 and revision order; see the module docstring.

    A uid whose search takes over ``max_seconds_per_uid`` is listed in
    :attr:`CheckResult.inconclusive` instead of passing or failing.
    """
    started = time.perf_counter()
    by_uid: dict[str, list[Operation]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    total = 0
    for operation in operations:
        by_uid[operation.uid].append(operation)
        counts[operation.outcome] += 1
        total += 1

    violations: list[Violation] = []
    inconclusive: list[str] = []
    for uid, ops in by_uid.items():
        violations.extend(check_single_owner(ops))
        violations.extend(check_agreement(ops))
        violations.extend(check_revision_order(ops))
        kept = [op for op in ops if _relevant(op)]
        deadline = time.perf_counter() + max_seconds_per_uid
        try:
            failure = _diagnose(kept, False, deadline)
        except SearchTimeout:
            logger.warning(
                "uid %r: search out of time after %.1f s, inconclusive",
                uid,
                max_seconds_per_uid,
            )
            inconclusive.append(uid)
            continue
        if failure is not None:
            violations.append(
                _linearizability_violation(
                    uid,
                    kept,
                    failure,
                    shrink,
                    shrink_budget,
                    min(SHRINK_SECONDS, max_seconds_per_uid),
                )
            )
    elapsed = time.perf_counter() - started
    if violations:
        logger.info(
            "history of %d operations: %d violation(s) on %d uid(s)",
            total,
            len(violations),
            len({v.uid for v in violations}),
        )
    return CheckResult(
        total,
        len(by_uid),
        tuple(violations),
        elapsed,
        dict(counts),
        tuple(inconclusive),
    )


def _linearizability_violation(
    uid: str,
    kept: list[Operation],
    failure: _Failure,
    shrink: bool,
    budget: int,
    seconds: float,
) -> Violation:
    blocker, window, start_any = failure
    if not shrink:
        return Violation(
            "linearizability",
            uid,
            f"no order of its {len(kept)} operations explains every result",
            tuple(kept),
            minimal=False,
        )
    writers = _writers(window)
    # Every search made while shrinking shares one deadline, so a single
    # slow candidate cannot outlast the shrinking budget.
    deadline = time.perf_counter() + seconds

    def same_failure(candidate: Sequence[Operation]) -> bool:
        # Keep the write behind every revision a kept call observed, and
        # insist on the same stuck operation: a subset failing for a
        # reason of its own (a remove whose link was dropped) is not an
        # explanation of this failure.
        members = set(map(id, candidate))
        for op in candidate:
            observed = _observed(op)
            writer = None if observed is None else writers.get(observed)
            if writer is not None and id(writer) not in members:
                return False
        return (
            id(blocker) in members
            and _blocker(candidate, start_any, deadline) is blocker
        )

    evidence, minimal = shrink_failure(window, same_failure, budget, seconds)
    before = "in any state" if start_any else "absent"
    message = (
        f"no order explains these {len(evidence)} of its {len(kept)} "
        f"operations, starting {before}; the last it could not explain "
        f"is {blocker.process}'s {blocker.op}"
    )
    if minimal:
        message += " (drop any one and the rest is explained)"
    return Violation(
        "linearizability", uid, message, tuple(evidence), minimal, before
    )


#: A proven failure: the blocker, a failing window holding it, and
#: whether that window starts in any state (else absent).
_Failure = tuple[Operation, list[Operation], bool]


def _diagnose(
    kept: list[Operation], start_any: bool, deadline: float | None = None
) -> _Failure | None:
    """Decide linearizability of one uid; None if linearizable.

    A linearizable history is usually confirmed by a short walk, while a
    broken one can make the search exhaust a long prefix before it may
    say no. So the search first runs on a budget; if that runs out, a
    short window around where it got stuck is checked (a failing window
    proves the whole failing, see :func:`failing_window`), and only then
    is the whole searched without a budget of configurations. Past
    ``deadline`` (a ``time.perf_counter()`` value) it raises
    :class:`SearchTimeout`.
    """
    if not kept:
        return None
    start = _ANY if start_any else None
    search = _Search(kept, start)
    verdict = search.run(budget=max(5_000, 8 * len(kept)), deadline=deadline)
    if verdict is None and search.blocker >= 0:
        found = failing_window(kept, kept[search.blocker], deadline)
        if found is not None:
            return found
    if verdict is None:
        search = _Search(kept, start)
        verdict = search.run(deadline=deadline)
    if verdict:
        return None
    blocker = kept[search.blocker]
    found = failing_window(kept, blocker, deadline)
    return found if found is not None else (blocker, kept, start_any)


def failing_window(
    ops: Sequence[Operation],
    suspect: Operation,
    deadline: float | None = None,
) -> _Failure | None:
    """A short stretch of ``ops`` around ``suspect`` that fails alone.

    The window starts at a quiet moment Q (every completed call invoked
    before Q completed before Q), in any register state, and keeps the
    calls of unknown outcome invoked before Q (they may act later). It
    ends at the suspect's completion H: later calls are dropped, and
    calls still running at H count as unknown there (a get is dropped).
    Every call kept with a known result completed by H, so dropped ones
    cannot have acted before it: if the window fails, so does the whole.
    Windows from later to earlier Q are tried, up to half the history;
    returns ``(blocker, window, True)`` or None.
    """
    if suspect.complete is None:
        return None
    horizon = suspect.complete
    ordered = sorted(ops, key=lambda op: op.invoke)

    # Quiet moments, latest first, before the suspect's invocation.
    quiet = []
    open_until = float("-inf")
    for index, op in enumerate(ordered):
        if op.invoke > suspect.invoke:
            break
        if index and op.invoke > open_until:
            quiet.append(index)
        if op.outcome == "ok" and op.complete is not None:
            open_until = max(open_until, op.complete)
    quiet.reverse()

    step = 1
    while step <= len(quiet):
        window = _window(ordered, quiet[step - 1], horizon)
        if len(window) * 2 > len(ordered):
            return None
        blocker = _blocker(window, True, deadline)
        if blocker is not None:
            return blocker, window, True
        step *= 2
    return None


def _window(
    ordered: Sequence[Operation], start: int, horizon: float
) -> list[Operation]:
    """The calls of :func:`failing_window` between ``start`` and H."""
    window = [op for op in ordered[:start] if op.outcome == "unknown"]
    for op in ordered[start:]:
        if op.invoke > horizon:
            break
        if op.outcome == "ok" and (op.complete or 0.0) > horizon:
            if op.op == "get":
                continue
            op = replace(op, outcome="unknown", result=None)
        window.append(op)
    return window


def _observed(op: Operation) -> int | None:
    """The revision an ok call observed (not wrote), if any."""
    if op.outcome != "ok" or op.result is None:
        return None
    if op.op == "get" or (op.op == "try_set" and not op.result["created"]):
        revision = op.result.get("revision")
        return revision if isinstance(revision, int) else None
    return None


def _writers(ops: Sequence[Operation]) -> dict[int, Operation]:
    """Which ok call wrote each revision."""
    found = {}
    for op in ops:
        if op.outcome != "ok" or op.result is None:
            continue
        if op.op == "set" or (op.op == "try_set" and op.result["created"]):
            found[op.result["revision"]] = op
    return found


# ----------------------------------------------------------------- G3


def is_linearizable(
    ops: Sequence[Operation], *, start_any: bool = False
) -> bool:
    """Whether the operations of ONE uid are linearizable (see module).

    The register starts absent, or in any state with ``start_any``.
    """
    return _check(ops, start_any)


def _blocker(
    ops: Sequence[Operation],
    start_any: bool,
    deadline: float | None = None,
) -> Operation | None:
    """None if linearizable, else the operation the search stopped at.

    That is the operation with the latest completion that the search
    could not get past: every earlier completion has an explanation.
    Raises :class:`SearchTimeout` past ``deadline``.
    """
    kept = [op for op in ops if _relevant(op)]
    if not kept:
        return None
    search = _Search(kept, _ANY if start_any else None)
    if search.run(deadline=deadline):
        return None
    return kept[search.blocker]


def _check(ops: Sequence[Operation], start_any: bool) -> bool:
    return _diagnose([op for op in ops if _relevant(op)], start_any) is None


def _relevant(op: Operation) -> bool:
    """Failed calls and unanswered reads carry no information."""
    if op.outcome == "fail":
        return False
    return not (op.outcome == "unknown" and op.op == "get")


class _Search:
    """Wing-Gong search with memoization over one uid's operations.

    The list holds node 0 (head), call node ``2i+1`` and return node
    ``2i+2`` of operation ``i``; operations of unknown outcome have no
    return node (nothing forces them to have taken effect).
    """

    def __init__(self, ops: Sequence[Operation], start: State) -> None:
        count = len(ops)
        self.count = count
        self.start = start
        self.blocker = -1
        self.code = [_CODES[op.op] for op in ops]
        self.pod = [-1 if op.pod is None else op.pod for op in ops]
        self.known = [op.outcome == "ok" for op in ops]
        self.answer = [_answer(op) for op in ops]

        # Call before return at equal times: overlapping, the lenient
        # reading (never reports a violation the clocks cannot prove).
        events = [(op.invoke, 0, 2 * i + 1) for i, op in enumerate(ops)]
        events += [
            (op.complete, 1, 2 * i + 2)
            for i, op in enumerate(ops)
            if op.outcome == "ok" and op.complete is not None
        ]
        events.sort()
        size = 2 * count + 1
        self.nxt = [-1] * size
        self.prv = [-1] * size
        self.position = [0] * size
        previous = 0
        for position, (_, _, node) in enumerate(events, start=1):
            self.nxt[previous] = node
            self.prv[node] = previous
            self.position[node] = position
            previous = node

    def _lift(self, i: int) -> None:
        """Take operation ``i``'s call and return nodes out of the list."""
        nxt, prv = self.nxt, self.prv
        nodes = (2 * i + 1, 2 * i + 2) if self.known[i] else (2 * i + 1,)
        for node in nodes:
            before, after = prv[node], nxt[node]
            nxt[before] = after
            if after != -1:
                prv[after] = before

    def _unlift(self, i: int) -> None:
        """Put them back (reverse order of :meth:`_lift`)."""
        nxt, prv = self.nxt, self.prv
        nodes = (2 * i + 2, 2 * i + 1) if self.known[i] else (2 * i + 1,)
        for node in nodes:
            before, after = prv[node], nxt[node]
            nxt[before] = node
            if after != -1:
                prv[after] = node

    def run(
        self, budget: int | None = None, deadline: float | None = None
    ) -> bool | None:
        """Search; None when ``budget`` configurations were not enough.

        Raises :class:`SearchTimeout` once ``time.perf_counter()`` passes
        ``deadline`` (looked at every 1024 new configurations, so the
        clock costs nothing noticeable).
        """
        nxt = self.nxt
        step = self._step
        known = self.known
        remaining = sum(known)
        state: State = self.start
        linearized = 0
        furthest = -1
        seen: set[tuple[int, State]] = set()
        stack: list[tuple[int, State]] = []
        node = nxt[0]
        while remaining:
            if node > 0 and node & 1:
                i = node >> 1
                after = step(state, i)
                if after is not _BAD:
                    marked = linearized | (1 << i)
                    key = (marked, after)
                    if key not in seen:
                        seen.add(key)
                        if budget is not None and len(seen) > budget:
                            return None
                        if (
                            deadline is not None
                            and not len(seen) & 1023
                            and time.perf_counter() > deadline
                        ):
                            raise SearchTimeout
                        stack.append((i, state))
                        state = after
                        linearized = marked
                        remaining -= known[i]
                        self._lift(i)
                        node = nxt[0]
                        continue
                node = nxt[node]
                continue

            # A return node (or the end): the operation it closes was not
            # linearized in time; undo the most recent choice.
            if node > 0 and self.position[node] > furthest:
                furthest = self.position[node]
                self.blocker = (node - 2) >> 1
            if not stack:
                return False
            i, state = stack.pop()
            linearized &= ~(1 << i)
            remaining += known[i]
            self._unlift(i)
            node = nxt[2 * i + 1]
        return True

    def _step(self, state: State, i: int) -> State:
        """The state after operation ``i`` in ``state``, or ``_BAD``."""
        code, pod = self.code[i], self.pod[i]
        if state is _ANY:
            return _step_from_any(code, pod, self.known[i], self.answer[i])
        if not self.known[i]:
            return _unknown_effect(code, pod, state)
        owner, flag, revision = self.answer[i]
        if code == _GET:
            if owner is None or revision is None:
                return None if state is None else _BAD
            return _observe(state, owner, revision)
        if code == _TRY:
            if not flag:
                if owner is None or revision is None:
                    return _BAD
                return _observe(state, owner, revision)
            if state is not None or owner != pod:
                return _BAD
            return (pod, revision)
        if code == _SET:
            if owner != pod or flag != (state is None):
                return _BAD
            return (pod, revision)
        if code == _REMOVE:
            return None if flag == (state is not None) else _BAD
        linked_here = state is not None and state[0] == pod
        if flag:
            return None if linked_here else _BAD
        return _BAD if linked_here else state


#: What an operation answered: ``(pod, flag, revision)`` where the flag is
#: ``created`` for the sets and ``removed`` for the removes.
Answer = tuple[int | None, bool, int | None]


def _answer(op: Operation) -> Answer:
    result = op.result or {}
    if op.outcome != "ok":
        return (None, False, None)
    if op.op in ("try_set", "set"):
        return (result["pod"], result["created"], result["revision"])
    if op.op == "get":
        return (result["pod"], False, result["revision"])
    return (None, result["removed"], None)


def _step_from_any(code: int, pod: int, known: bool, answer: Answer) -> State:
    """The first step from an unknown start: the lenient choice.

    Whatever the start was, the operation's own answer tells the state
    after it; where it does not, the state stays unknown.
    """
    owner, flag, revision = answer
    if not known:
        if code in (_TRY, _SET):
            return (pod, None)
        return None
    if code in (_GET, _TRY):
        if owner is None or revision is None:
            return None
        if code == _TRY and flag and owner != pod:
            return _BAD
        return (owner, revision)
    if code == _SET:
        return (pod, revision) if owner == pod else _BAD
    if code == _REMOVE or flag:
        return None
    return _ANY


def _observe(state: State, owner: int, revision: int) -> State:
    """A read of ``owner`` at ``revision``: it must be the state."""
    if state is None or state[0] != owner:
        return _BAD
    if state[1] is None:
        return (owner, revision)
    return state if state[1] == revision else _BAD


def _unknown_effect(code: int, pod: int, state: State) -> State:
    """The effect of a call of unknown outcome, if it has one.

    A call that would change nothing is the same as one never applied,
    which the search covers by not linearizing it: it is refused here.
    """
    if code == _TRY:
        return (pod, None) if state is None else _BAD
    if code == _SET:
        return (pod, None)
    if code == _REMOVE:
        return None if state is not None else _BAD
    if code == _REMOVE_ID:
        return None if state is not None and state[0] == pod else _BAD
    return _BAD


# ------------------------------------------------------------- shrinking


def shrink_failure(
    ops: Sequence[Operation],
    fails: Callable[[Sequence[Operation]], bool],
    budget: int = SHRINK_BUDGET,
    seconds: float = SHRINK_SECONDS,
) -> tuple[list[Operation], bool]:
    """Delta debugging: a small subset of ``ops`` on which ``fails`` holds.

    Returns ``(subset, minimal)``; ``minimal`` is True when the subset is
    1-minimal (no single operation can be dropped), False when the
    budget of ``fails`` calls or of ``seconds`` ran out first (also when
    ``fails`` itself raises :class:`SearchTimeout`).
    """
    deadline = time.perf_counter() + seconds
    current = [op for op in ops if _relevant(op)]
    chunk = max(1, len(current) // 2)
    spent = 0
    while True:
        removed_any = False
        start = 0
        while start < len(current):
            if spent >= budget or time.perf_counter() > deadline:
                return current, False
            candidate = current[:start] + current[start + chunk :]
            spent += 1
            try:
                failing = bool(candidate) and fails(candidate)
            except SearchTimeout:
                return current, False
            if failing:
                current = candidate
                removed_any = True
            else:
                start += chunk
        if chunk == 1 and not removed_any:
            return current, True
        if not removed_any:
            chunk = max(1, chunk // 2)


# ------------------------------------------------------ revision order


def _written(op: Operation) -> int | None:
    """The revision an ok write (set, or a creating try_set) made."""
    if op.outcome != "ok" or op.result is None:
        return None
    if op.op == "set" or (op.op == "try_set" and op.result["created"]):
        revision = op.result["revision"]
        return revision if isinstance(revision, int) else None
    return None


def _removed(op: Operation) -> bool:
    """Whether ``op`` is an ok remove that deleted a link (a new revision)."""
    return (
        op.op in ("remove", "remove_with_id")
        and op.outcome == "ok"
        and op.result is not None
        and bool(op.result.get("removed"))
    )


def check_revision_order(ops: Sequence[Operation]) -> list[Violation]:
    """Revision order on one uid (see the module docstring).

    etcd revisions are global and grow with real time, so for ok calls,
    with "before" meaning completed before the other was invoked:

    (a) two different writes never report the same revision;
    (b) a write after a write W has a revision above rev(W);
    (c) a read after a write W returns no revision below rev(W);
    (d) a remove that deleted a link, invoked after revisions up to r
        were known, has a revision above r; a write or read after it
        shows a revision above that (the link it sees is newer).

    One sweep in invocation order: the calls completed before each
    invocation are released from a heap and raise the known floor.
    Calls of unknown outcome prove nothing here and are ignored.
    """
    violations: list[Violation] = []
    by_revision: dict[int, list[Operation]] = defaultdict(list)
    for op in ops:
        revision = _written(op)
        if revision is not None:
            by_revision[revision].append(op)
    for revision, writers in sorted(by_revision.items()):
        if len(writers) > 1:
            violations.append(
                Violation(
                    "revision-order",
                    writers[0].uid,
                    f"{len(writers)} different writes report revision "
                    f"{revision}",
                    tuple(writers),
                )
            )

    # Floors: the largest revision written (a read may still see it) and
    # the largest lower bound of a remove's revision (reads and writes
    # must be above it), each with the call that set it.
    written: tuple[int, Operation] | None = None
    removal: tuple[int, Operation] | None = None
    pending: list[tuple[float, int, int, Operation]] = []
    ordered = sorted(
        (op for op in ops if op.outcome == "ok" and op.complete is not None),
        key=lambda op: op.invoke,
    )
    for index, op in enumerate(ordered):
        while pending and pending[0][0] < op.invoke:
            _, level, _, done = heapq.heappop(pending)
            if _written(done) is not None:
                if written is None or level > written[0]:
                    written = (level, done)
            elif removal is None or level > removal[0]:
                removal = (level, done)
        wrote = _written(op)
        seen = _observed(op)
        claim = wrote if wrote is not None else seen
        if claim is not None:
            problem = _out_of_order(claim, written, removal)
            if problem is not None:
                message, cause = problem
                violations.append(
                    Violation(
                        "revision-order",
                        op.uid,
                        f"{op.process}'s {op.op} reports revision {claim}, "
                        + message,
                        (cause, op),
                    )
                )
        if wrote is not None:
            floor: int | None = wrote
        elif _removed(op):
            floor = 1 + max(
                written[0] if written else 0, removal[0] if removal else 0
            )
        else:
            floor = None
        if floor is not None:
            assert op.complete is not None
            heapq.heappush(pending, (op.complete, floor, index, op))
    return violations


def _out_of_order(
    claim: int,
    written: tuple[int, Operation] | None,
    removal: tuple[int, Operation] | None,
) -> tuple[str, Operation] | None:
    """Why ``claim`` breaks rules (b)-(d), with the call to blame."""
    # A write equal to an earlier write's revision is rule (a)'s report.
    if written is not None and claim < written[0]:
        floor, cause = written
        return (
            f"below revision {floor} that "
            f"{cause.process}'s {cause.op} wrote before it was invoked",
            cause,
        )
    if removal is not None and claim <= removal[0]:
        floor, cause = removal
        return (
            f"not above {floor}: {cause.process}'s {cause.op} deleted the "
            f"link at a revision of at least {floor} before it was invoked",
            cause,
        )
    return None


# ---------------------------------------------------------------- G2, G1


def check_agreement(ops: Sequence[Operation]) -> list[Violation]:
    """G2 on one uid's operations (see the module docstring)."""
    racers = sorted(
        (op for op in ops if op.op == "try_set" and op.outcome == "ok"),
        key=lambda op: op.invoke,
    )
    disturbers = [
        op for op in ops if op.op in _WRITES and op.outcome != "fail"
    ]
    violations = []
    for group in _overlap_groups(racers):
        if len(group) < 2 or _disturbed(group, disturbers):
            continue
        answers = {(op.result or {})["pod"] for op in group}
        revisions = {(op.result or {})["revision"] for op in group}
        creators = [op for op in group if (op.result or {})["created"]]
        problems = []
        if len(answers) > 1:
            problems.append(f"they name pods {sorted(answers)}")
        elif len(revisions) > 1:
            problems.append(f"they name revisions {sorted(revisions)}")
        if len(creators) > 1:
            problems.append(f"{len(creators)} of them created the link")
        if problems:
            violations.append(
                Violation(
                    "agreement",
                    group[0].uid,
                    f"{len(group)} racing try_sets disagree: "
                    + "; ".join(problems),
                    tuple(group),
                )
            )
    return violations


def _overlap_groups(racers: list[Operation]) -> list[list[Operation]]:
    groups: list[list[Operation]] = []
    end = float("-inf")
    for op in racers:
        complete = op.complete if op.complete is not None else float("inf")
        if groups and op.invoke <= end:
            groups[-1].append(op)
            end = max(end, complete)
        else:
            groups.append([op])
            end = complete
    return groups


def _disturbed(group: list[Operation], disturbers: list[Operation]) -> bool:
    """Whether another write may have taken effect during the group."""
    start = min(op.invoke for op in group)
    end = max(
        float("inf") if op.complete is None else op.complete for op in group
    )
    for op in disturbers:
        if op.invoke > end:
            continue
        if op.outcome == "unknown" or op.complete is None:
            return True
        if op.complete >= start:
            return True
    return False


def check_single_owner(ops: Sequence[Operation]) -> list[Violation]:
    """G1 on one uid: one revision, one owner."""
    owners: dict[int, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.outcome != "ok" or op.op not in ("try_set", "set", "get"):
            continue
        result = op.result or {}
        if result.get("revision") is not None:
            owners[result["revision"]].append(op)
    violations = []
    for revision, seen in owners.items():
        pods = {(op.result or {})["pod"] for op in seen}
        if len(pods) > 1:
            violations.append(
                Violation(
                    "single-owner",
                    seen[0].uid,
                    f"revision {revision} is reported with pods "
                    f"{sorted(pods)}",
                    tuple(seen),
                )
            )
    return violations


# ------------------------------------------------------------- rendering


def _by_invoke(ops: Iterable[Operation]) -> list[Operation]:
    return sorted(ops, key=lambda op: (op.invoke, op.process))
