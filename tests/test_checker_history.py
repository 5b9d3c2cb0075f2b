"""History recording, the JSON-lines format and ``etcdroute check``.

Pure units: the calls recorded here are plain functions, and the CLI
reads files written by the test (the real-etcd recordings are in
test_properties_concurrent.py and test_negative_control.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from etcdroute.cli import main
from etcdroute.errors import (
    HistoryFormatError,
    PodNotAcceptingError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from etcdroute.history import (
    HistoryRecorder,
    Operation,
    read_history,
    write_history,
)
from etcdroute.models import LinkResult


def _clean_history() -> list[Operation]:
    return [
        Operation(
            "w1",
            "try_set",
            "u/1",
            2,
            1.0,
            1.5,
            "ok",
            {"pod": 2, "created": True, "revision": 7},
        ),
        Operation(
            "w2", "get", "u/1", None, 1.6, 1.7, "ok", {"pod": 2, "revision": 7}
        ),
        Operation("w2", "remove", "u/1", None, 1.8, None, "unknown"),
        Operation("w1", "set", "u/1", 3, 2.0, 2.1, "fail"),
    ]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    history = _clean_history()
    assert write_history(path, history, {"run": "unit"}) == 4
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "format": "etcdroute-history",
        "version": 1,
        "run": "unit",
    }
    assert json.loads(lines[1])["result"] == {
        "pod": 2,
        "created": True,
        "revision": 7,
    }
    assert read_history(path) == history


def test_reader_accepts_files_without_header(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    line = {
        "process": "p",
        "op": "get",
        "uid": "u",
        "pod": None,
        "invoke": 1,
        "complete": 2,
        "outcome": "ok",
        "result": {"pod": None, "revision": None},
    }
    path.write_text(json.dumps(line) + "\n\n", encoding="utf-8")
    (op,) = read_history(path)
    assert op.invoke == 1.0 and op.result == line["result"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"op": "steal"}, "op 'steal'"),
        ({"outcome": "maybe"}, "outcome 'maybe'"),
        ({"pod": None}, "does not fit op try_set"),
        ({"complete": 0.5}, "earlier than invoke"),
        ({"complete": None}, "complete is null"),
        ({"result": {"pod": 1, "created": "yes", "revision": 3}}, "created"),
        ({"invoke": "soon"}, "invoke must be a number"),
    ],
)
def test_reader_names_the_broken_field(
    tmp_path: Path, change: dict[str, object], complaint: str
) -> None:
    line = {
        "process": "p",
        "op": "try_set",
        "uid": "u",
        "pod": 1,
        "invoke": 1.0,
        "complete": 2.0,
        "outcome": "ok",
        "result": {"pod": 1, "created": True, "revision": 3},
    }
    line.update(change)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"format": "etcdroute-history", "version": 1}\n'
        + json.dumps(line)
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(HistoryFormatError) as info:
        read_history(path)
    assert info.value.line == 2 and complaint in info.value.reason


def test_recorder_maps_errors_to_outcomes() -> None:
    recorder = HistoryRecorder()

    def timeout() -> LinkResult:
        raise StoreTimeoutError("deadline")

    def unavailable() -> bool:
        raise StoreUnavailableError("down")

    def refused() -> LinkResult:
        raise PodNotAcceptingError("game", 2, "draining")

    made = recorder.call(
        "w", "try_set", "u", 1, lambda: LinkResult("u", 1, True, 9)
    )
    assert made.revision == 9
    with pytest.raises(StoreTimeoutError):
        recorder.call("w", "set", "u", 1, timeout)
    with pytest.raises(StoreUnavailableError):
        recorder.call("w", "remove", "u", None, unavailable)
    with pytest.raises(PodNotAcceptingError):
        recorder.call("w", "try_set", "u", 1, refused)
    outcomes = [(o.op, o.outcome, o.result) for o in recorder.operations()]
    assert outcomes == [
        ("try_set", "ok", {"pod": 1, "created": True, "revision": 9}),
        ("set", "unknown", None),
        ("remove", "unknown", None),
        ("try_set", "fail", None),
    ]
    assert all(o.complete is not None for o in recorder.operations())


def test_recorder_reports_calls_that_never_returned() -> None:
    recorder = HistoryRecorder()
    recorder.begin("w", "set", "u", 1)
    (pending,) = recorder.operations()
    assert pending.outcome == "unknown" and pending.complete is None


def test_recorder_is_thread_safe() -> None:
    recorder = HistoryRecorder()

    def work(name: str) -> None:
        for _ in range(500):
            recorder.call(name, "remove", "u", None, lambda: False)

    threads = [
        threading.Thread(target=work, args=(f"t{i}",)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recorder.operations()) == 4000


def test_cli_check_passes_a_clean_history(tmp_path: Path) -> None:
    path = tmp_path / "clean.jsonl"
    write_history(path, _clean_history())
    outcome = CliRunner().invoke(main, ["check", str(path)])
    assert outcome.exit_code == 0, outcome.output
    assert "4 operations" in outcome.output and "OK" in outcome.output


def test_cli_check_reports_a_violation(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_history(
        path,
        [
            Operation(
                "w1",
                "try_set",
                "room",
                1,
                1.0,
                2.0,
                "ok",
                {"pod": 1, "created": True, "revision": 7},
            ),
            Operation(
                "w2",
                "try_set",
                "room",
                2,
                1.1,
                2.1,
                "ok",
                {"pod": 2, "created": True, "revision": 8},
            ),
        ],
    )
    outcome = CliRunner().invoke(main, ["check", str(path)])
    assert outcome.exit_code == 1, outcome.output
    assert "VIOLATIONS" in outcome.output
    assert "linearizability on uid 'room'" in outcome.output
    assert "agreement on uid 'room'" in outcome.output


def test_cli_check_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    outcome = CliRunner().invoke(main, ["check", str(path)])
    assert outcome.exit_code == 2
    assert "line 1" in outcome.output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"op": "get"}\n\xff\xfe\n', "not UTF-8"),
        ('{"op": "get"}\n'.encode("utf-16"), "not UTF-8"),
        (b'{"pod": ' + b"9" * 5000 + b"}\n", "not readable JSON"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "too deeply nested"),
    ],
    ids=["invalid-utf8", "utf16", "huge-int", "deep-nesting"],
)
def test_cli_check_refuses_unreadable_files_without_traceback(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes(content)
    outcome = CliRunner().invoke(main, ["check", str(path)])
    assert outcome.exit_code == 2, outcome.output
    assert outcome.exception is None or isinstance(
        outcome.exception, SystemExit
    )
    assert reason in outcome.output and "Traceback" not in outcome.output


@pytest.mark.parametrize(
    "name", ["[/]", "[link=file:///etc/passwd]x", "[bold]p[/bold]"]
)
def test_cli_check_prints_uids_and_processes_literally(
    tmp_path: Path, name: str
) -> None:
    # Two creators of one link: a violation whose report names both.
    ops = [
        Operation(
            name,
            "try_set",
            name,
            pod,
            1.0 + pod / 10,
            2.0 + pod / 10,
            "ok",
            {"pod": pod, "created": True, "revision": 6 + pod},
        )
        for pod in (1, 2)
    ]
    path = tmp_path / "markup.jsonl"
    write_history(path, ops)
    outcome = CliRunner().invoke(
        main, ["check", str(path)], terminal_width=400
    )
    assert outcome.exit_code == 1, outcome.output
    assert outcome.exception is None or isinstance(
        outcome.exception, SystemExit
    )
    assert f"on uid {name!r}" in outcome.output
    assert f"{name}'s try_set" in outcome.output


def test_cli_check_reports_inconclusive_with_exit_3(tmp_path: Path) -> None:
    # Twenty sets of unknown outcome and a read none of them explains:
    # the search needs far longer than the tiny budget allows.
    ops = [
        Operation(f"w{i}", "set", "slow", i, i / 1000, None, "unknown")
        for i in range(20)
    ]
    ops.append(
        Operation(
            "r",
            "get",
            "slow",
            None,
            1.0,
            1.1,
            "ok",
            {"pod": 999, "revision": 7},
        )
    )
    path = tmp_path / "slow.jsonl"
    write_history(path, ops)
    outcome = CliRunner().invoke(
        main, ["check", str(path), "--max-seconds-per-uid", "0.1"]
    )
    assert outcome.exit_code == 3, outcome.output
    assert "INCONCLUSIVE" in outcome.output and "'slow'" in outcome.output
    assert "OK" not in outcome.output
