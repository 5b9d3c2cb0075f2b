"""Histories of link operations: record, write and read them.

A history is what the linearizability checker (:mod:`etcdroute.checker`)
judges: one :class:`Operation` per link call, with who called, when it
was invoked and when it completed (``time.monotonic()`` seconds), what it
asked and what came back. On disk a history is JSON lines, one operation
per line, optionally preceded by a header line; docs/checking.md gives
the format, which the benchmark harness writes too.

Outcomes:

* ``ok``: the call returned; ``result`` is what it returned;
* ``fail``: the call raised an error that guarantees it changed nothing
  (target pod not registered or not accepting, bad argument, driver not
  running);
* ``unknown``: the call raised any other error (a deadline passed, etcd
  unreachable, ...) or never returned: it may or may not take effect, at
  any time after its invocation.

:class:`HistoryRecorder` is a thread-safe log; :meth:`HistoryRecorder.call`
runs one call and records it, and :class:`RecordingLinks` wraps a
:class:`~etcdroute.links.LinkTable` so that every link call of one caller
is recorded.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from etcdroute.errors import (
    HistoryFormatError,
    InvalidArgumentError,
    LifecycleError,
    PodNotAcceptingError,
    PodNotRegisteredError,
)
from etcdroute.links import LinkTable
from etcdroute.models import Link, LinkResult

logger = logging.getLogger(__name__)

FORMAT_NAME: Final = "etcdroute-history"
FORMAT_VERSION: Final = 1

OPS: Final = ("try_set", "set", "remove", "remove_with_id", "get")
OUTCOMES: Final = ("ok", "fail", "unknown")

#: Operations that take a pod argument, and those that must not.
_WITH_POD: Final = frozenset({"try_set", "set", "remove_with_id"})

#: Errors that prove a call changed nothing: raised before any write, or
#: by a transaction whose guard failed.
DEFINITE_FAILURES: tuple[type[BaseException], ...] = (
    PodNotAcceptingError,
    PodNotRegisteredError,
    InvalidArgumentError,
    LifecycleError,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Operation:
    """One recorded link call (see the module docstring for outcomes).

    ``result`` is set for ``ok`` only: ``{"pod", "created", "revision"}``
    for try_set / set, ``{"removed"}`` for the removes, ``{"pod",
    "revision"}`` for get (both None when the uid had no link).
    """

    process: str
    op: str
    uid: str
    pod: int | None
    invoke: float
    complete: float | None
    outcome: str
    result: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this operation, in the documented format."""
        return {
            "process": self.process,
            "op": self.op,
            "uid": self.uid,
            "pod": self.pod,
            "invoke": self.invoke,
            "complete": self.complete,
            "outcome": self.outcome,
            "result": None if self.result is None else dict(self.result),
        }

    @classmethod
    def from_json(cls, document: Any) -> Operation:
        """Build and validate an operation; raises ``ValueError``."""
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        operation = cls(
            process=_text(document, "process"),
            op=_text(document, "op"),
            uid=_text(document, "uid"),
            pod=_optional_int(document, "pod"),
            invoke=_number(document, "invoke"),
            complete=_optional_number(document, "complete"),
            outcome=_text(document, "outcome"),
            result=document.get("result"),
        )
        if operation.outcome != "ok" and operation.result is not None:
            operation = replace(operation, result=None)
        operation.validate()
        return operation

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that breaks the format."""
        if self.op not in OPS:
            raise ValueError(f"op {self.op!r} is not one of {OPS}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} not in {OUTCOMES}")
        if (self.op in _WITH_POD) != (self.pod is not None):
            raise ValueError(f"pod {self.pod!r} does not fit op {self.op}")
        if self.outcome != "unknown" and self.complete is None:
            raise ValueError(f"complete is null for outcome {self.outcome}")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError("complete is earlier than invoke")
        if self.outcome != "ok":
            return
        if not isinstance(self.result, Mapping):
            raise ValueError("result must be an object for outcome ok")
        if self.op in ("try_set", "set"):
            _int_in(self.result, "pod")
            _int_in(self.result, "revision")
            if not isinstance(self.result.get("created"), bool):
                raise ValueError("result.created must be true or false")
        elif self.op == "get":
            pod = self.result.get("pod")
            revision = self.result.get("revision")
            if (pod is None) != (revision is None):
                raise ValueError("result.pod and .revision: both or neither")
            if pod is not None:
                _int_in(self.result, "pod")
                _int_in(self.result, "revision")
        elif not isinstance(self.result.get("removed"), bool):
            raise ValueError("result.removed must be true or false")

    def describe(self, origin: float | None = None) -> str:
        """One readable line, for reports.

        With ``origin``, times are milliseconds since ``origin``;
        otherwise the recorded seconds.
        """
        argument = "" if self.pod is None else f", pod {self.pod}"
        return (
            f"[{_clock_text(self.invoke, origin)} .. "
            f"{_clock_text(self.complete, origin)}] {self.process}: "
            f"{self.op}({self.uid!r}{argument}) -> {self.answer()}"
        )

    def answer(self) -> str:
        """The outcome in words: the result if ok, else the outcome."""
        if self.outcome != "ok":
            return self.outcome
        return _describe_result(self.op, self.result or {})


def _clock_text(moment: float | None, origin: float | None) -> str:
    if moment is None:
        return "never"
    if origin is None:
        return f"{moment:.6f}"
    return f"{(moment - origin) * 1000:.3f}ms"


def _describe_result(op: str, result: Mapping[str, Any]) -> str:
    if op in ("try_set", "set"):
        made = "created" if result["created"] else "exists"
        return f"pod {result['pod']} {made} @{result['revision']}"
    if op == "get":
        if result["pod"] is None:
            return "absent"
        return f"pod {result['pod']} @{result['revision']}"
    return "removed" if result["removed"] else "not removed"


# ------------------------------------------------------------ recording


class HistoryRecorder:
    """A thread-safe log of operations, in completion order.

    Use :meth:`call` for each operation, or :meth:`begin` then
    :meth:`end`. A call begun and never ended appears in
    :meth:`operations` as ``unknown`` with ``complete`` null.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._done: list[Operation] = []
        self._pending: dict[int, Operation] = {}
        self._next_handle = 0

    def begin(self, process: str, op: str, uid: str, pod: int | None) -> int:
        """Note an invocation now; returns a handle for :meth:`end`."""
        pending = Operation(
            process, op, uid, pod, self._clock(), None, "unknown"
        )
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._pending[handle] = pending
        return handle

    def end(
        self,
        handle: int,
        outcome: str,
        result: Mapping[str, Any] | None = None,
    ) -> Operation:
        """Note the completion of a begun call; returns the operation."""
        complete = self._clock()
        with self._lock:
            pending = self._pending.pop(handle)
            done = Operation(
                pending.process,
                pending.op,
                pending.uid,
                pending.pod,
                pending.invoke,
                complete,
                outcome,
                None if outcome != "ok" else result,
            )
            self._done.append(done)
        return done

    def call(
        self,
        process: str,
        op: str,
        uid: str,
        pod: int | None,
        function: Callable[[], T],
    ) -> T:
        """Run ``function`` (the call), record it, return or re-raise.

        Definite failures (:data:`DEFINITE_FAILURES`) are recorded as
        ``fail``; every other exception as ``unknown``.
        """
        handle = self.begin(process, op, uid, pod)
        try:
            value = function()
        except DEFINITE_FAILURES:
            self.end(handle, "fail")
            raise
        except BaseException:
            self.end(handle, "unknown")
            raise
        self.end(handle, "ok", result_of(op, value))
        return value

    def add(self, operation: Operation) -> None:
        """Append an operation recorded elsewhere (validated)."""
        operation.validate()
        with self._lock:
            self._done.append(operation)

    def operations(self) -> list[Operation]:
        """Every operation so far: completed ones, then pending ones."""
        with self._lock:
            return [*self._done, *self._pending.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._done) + len(self._pending)


def result_of(op: str, value: object) -> dict[str, Any]:
    """The history ``result`` object of a link call's return value."""
    if op in ("try_set", "set"):
        if not isinstance(value, LinkResult):
            raise TypeError(f"{op} returned {value!r}, not a LinkResult")
        return {
            "pod": value.pod_id,
            "created": value.created,
            "revision": value.revision,
        }
    if op == "get":
        if value is None:
            return {"pod": None, "revision": None}
        if not isinstance(value, Link):
            raise TypeError(f"get returned {value!r}, not a Link")
        return {"pod": value.pod_id, "revision": value.revision}
    if not isinstance(value, bool):
        raise TypeError(f"{op} returned {value!r}, not a bool")
    return {"removed": value}


class RecordingLinks:
    """The link calls of one caller on a :class:`LinkTable`, recorded.

    Each method calls the table and records the call in ``recorder``
    under ``process`` (one sequential caller: do not share an instance
    between threads, give each thread its own).
    """

    def __init__(
        self,
        table: LinkTable,
        service: str,
        recorder: HistoryRecorder,
        process: str,
    ) -> None:
        self.table = table
        self.service = service
        self.recorder = recorder
        self.process = process

    def try_set(self, uid: str, pod_id: int) -> LinkResult:
        return self.recorder.call(
            self.process,
            "try_set",
            uid,
            pod_id,
            lambda: self.table.try_set(self.service, uid, pod_id),
        )

    def set(self, uid: str, pod_id: int) -> LinkResult:
        return self.recorder.call(
            self.process,
            "set",
            uid,
            pod_id,
            lambda: self.table.set(self.service, uid, pod_id),
        )

    def remove(self, uid: str) -> bool:
        return self.recorder.call(
            self.process,
            "remove",
            uid,
            None,
            lambda: self.table.remove(self.service, uid),
        )

    def remove_with_id(self, uid: str, pod_id: int) -> bool:
        """Compare-and-delete on the pod id alone (no epoch).

        The history format has no epoch, so the checker's model compares
        pod ids only; calls made with an epoch that refuse a later life's
        link would look like violations, hence none here.
        """
        return self.recorder.call(
            self.process,
            "remove_with_id",
            uid,
            pod_id,
            lambda: self.table.remove_with_id(self.service, uid, pod_id),
        )

    def get(self, uid: str) -> Link | None:
        return self.recorder.call(
            self.process,
            "get",
            uid,
            None,
            lambda: self.table.get(self.service, uid),
        )


# ------------------------------------------------------------ JSON lines


def header(**metadata: Any) -> dict[str, Any]:
    """The optional first line of a history file."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}


def dump_history(
    operations: Iterable[Operation],
    stream: IO[str],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write a header and one line per operation; returns the count."""
    stream.write(json.dumps(header(**(metadata or {}))) + "\n")
    count = 0
    for operation in operations:
        stream.write(json.dumps(operation.to_json(), allow_nan=False) + "\n")
        count += 1
    return count


def write_history(
    path: str | Path,
    operations: Iterable[Operation],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write a history file (UTF-8 JSON lines); returns the count."""
    with open(path, "w", encoding="utf-8") as stream:
        count = dump_history(operations, stream, metadata)
    logger.debug("wrote %d operations to %s", count, path)
    return count


def load_history(
    lines: Iterable[str], source: str = "<history>"
) -> list[Operation]:
    """Parse JSON lines; skip a header and blank lines.

    Raises :class:`HistoryFormatError` naming the source and line.
    """
    return list(iter_history(lines, source))


def iter_history(lines: Iterable[str], source: str) -> Iterator[Operation]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryFormatError(
                source, number, f"not JSON: {exc}"
            ) from None
        except (ValueError, RecursionError) as exc:
            # An integer over the int/str digit limit is a ValueError;
            # nesting deeper than the parser's recursion a RecursionError.
            reason = (
                "too deeply nested"
                if isinstance(exc, RecursionError)
                else str(exc)
            )
            raise HistoryFormatError(
                source, number, f"not readable JSON: {reason}"
            ) from None
        if (
            number == 1
            and isinstance(document, dict)
            and (document.get("format") == FORMAT_NAME)
        ):
            version = document.get("version")
            if version != FORMAT_VERSION:
                raise HistoryFormatError(
                    source, number, f"unsupported version {version!r}"
                )
            continue
        try:
            yield Operation.from_json(document)
        except ValueError as exc:
            raise HistoryFormatError(source, number, str(exc)) from None


def read_history(path: str | Path) -> list[Operation]:
    """Read a history file written by :func:`write_history` or others.

    The file must be UTF-8 (a leading byte order mark is allowed); other
    bytes raise :class:`HistoryFormatError` naming the line, as does any
    line that is not JSON, so callers catch a single error type.
    """
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise HistoryFormatError(
            str(path), line, f"not UTF-8 text (byte {exc.start})"
        ) from None
    # Split on newlines only: JSON strings may hold U+2028 and friends,
    # which str.splitlines would treat as line ends.
    return load_history(text.split("\n"), str(path))


# --------------------------------------------------------- field checks


def _text(document: Mapping[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {value!r}")
    return value


def _number(document: Mapping[str, Any], name: str) -> float:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return float(value)


def _optional_number(document: Mapping[str, Any], name: str) -> float | None:
    return None if document.get(name) is None else _number(document, name)


def _optional_int(document: Mapping[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 or null, not {value!r}")
    return value


def _int_in(result: Mapping[str, Any], name: str) -> int:
    value = result.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"result.{name} must be an int >= 0, not {value!r}")
    return value
