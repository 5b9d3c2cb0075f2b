"""How fast the history checker is: 100,000 operations over 1,000 uids.

Target (issue 4): such a history is checked in under 10 seconds here.

The history is synthetic but shaped like a contended run: many callers,
each a sequential process, doing link calls with skewed uid popularity
(a few hot uids take a large share, so calls on them overlap), latencies
drawn from a long-tailed distribution, a few calls that time out (some
applied, some not, some that never return) and a few definite failures.
Every call takes effect at one instant inside its interval (or, for a
timed-out call, possibly later, or never), applied to a true register,
so the history is linearizable by construction.

Side by side in the same run, as baselines: reading the history back
from its JSON lines (the cost the checker cannot avoid) and the same
check with one injected fault (a read of a link never written), which
must be found on exactly that uid.

    .venv/bin/python benchmarks/bench_checker.py [--ops N] [--uids N]

Writes benchmarks/results/checker.json and the table in docs/checking.md
between the ``bench-checker`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from etcdroute.checker import check_history
from etcdroute.history import Operation, read_history, write_history

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "checker.json"
DOC = ROOT / "docs" / "checking.md"
START, END = "<!-- bench-checker:start -->", "<!-- bench-checker:end -->"

OP_WEIGHTS = {
    "try_set": 45,
    "get": 30,
    "remove_with_id": 10,
    "set": 8,
    "remove": 7,
}


@dataclasses.dataclass
class Planned:
    """A call before its result is known: when it acts, if at all."""

    process: str
    op: str
    uid: str
    pod: int | None
    invoke: float
    complete: float | None
    acts_at: float | None
    outcome: str


def generate(
    ops: int,
    uids: int,
    *,
    processes: int = 64,
    pods: int = 8,
    hot_uids: int = 10,
    hot_share: float = 0.3,
    unknown_rate: float = 0.005,
    fail_rate: float = 0.01,
    seed: int = 1,
) -> list[Operation]:
    """A linearizable history of ``ops`` calls (see module docstring)."""
    rng = random.Random(seed)
    names = [f"u{index}" for index in range(uids)]
    kinds = list(OP_WEIGHTS)
    weights = list(OP_WEIGHTS.values())

    # Plan every call of every process: sequential within a process.
    planned: list[Planned] = []
    per_process = ops // processes + 1
    for number in range(processes):
        clock = rng.uniform(0.0, 0.01)
        for _ in range(per_process):
            if len(planned) >= ops:
                break
            if rng.random() < hot_share:
                uid = names[rng.randrange(hot_uids)]
            else:
                uid = names[rng.randrange(uids)]
            kind = rng.choices(kinds, weights)[0]
            pod = None if kind in ("get", "remove") else rng.randrange(pods)
            invoke = clock + rng.expovariate(1 / 0.0005)
            latency = 0.0005 + rng.lognormvariate(-7.0, 0.8)
            complete: float | None = invoke + latency
            acts_at: float | None = invoke + rng.random() * latency
            outcome = "ok"
            roll = rng.random()
            if roll < unknown_rate:
                outcome = "unknown"
                choice = rng.random()
                if choice < 0.4:
                    acts_at = None  # never applied
                elif choice < 0.7:
                    acts_at = invoke + latency * rng.uniform(1, 20)
                if rng.random() < 0.2:
                    complete = None  # never returned
            elif roll < unknown_rate + fail_rate and pod is not None:
                outcome, acts_at = "fail", None
            planned.append(
                Planned(
                    f"w{number}",
                    kind,
                    uid,
                    pod,
                    invoke,
                    complete,
                    acts_at,
                    outcome,
                )
            )
            clock = invoke + latency

    # Apply the calls that act, in the order they act, to a register.
    register: dict[str, tuple[int, int]] = {}
    revision = 1000
    results: dict[int, dict[str, Any]] = {}
    acting = sorted(
        (call.acts_at, index)
        for index, call in enumerate(planned)
        if call.acts_at is not None
    )
    for _, index in acting:
        call = planned[index]
        current = register.get(call.uid)
        if call.op == "get":
            results[index] = {
                "pod": None if current is None else current[0],
                "revision": None if current is None else current[1],
            }
        elif call.op == "try_set":
            if current is None:
                revision += 1
                register[call.uid] = (call.pod or 0, revision)
                results[index] = {
                    "pod": call.pod,
                    "created": True,
                    "revision": revision,
                }
            else:
                results[index] = {
                    "pod": current[0],
                    "created": False,
                    "revision": current[1],
                }
        elif call.op == "set":
            revision += 1
            register[call.uid] = (call.pod or 0, revision)
            results[index] = {
                "pod": call.pod,
                "created": current is None,
                "revision": revision,
            }
        elif call.op == "remove":
            if current is not None:
                revision += 1
                del register[call.uid]
            results[index] = {"removed": current is not None}
        else:
            removes = current is not None and current[0] == call.pod
            if removes:
                revision += 1
                del register[call.uid]
            results[index] = {"removed": removes}

    return [
        Operation(
            call.process,
            call.op,
            call.uid,
            call.pod,
            call.invoke,
            call.complete,
            call.outcome,
            results[index] if call.outcome == "ok" else None,
        )
        for index, call in enumerate(planned)
    ]


def inject_fault(history: list[Operation], seed: int) -> str:
    """Make one completed get report a link that was never written."""
    rng = random.Random(seed)
    candidates = [
        index
        for index, op in enumerate(history)
        if op.op == "get"
        and op.outcome == "ok"
        and (op.result or {}).get("pod") is not None
    ]
    index = rng.choice(candidates)
    victim = history[index]
    history[index] = dataclasses.replace(
        victim, result={"pod": 999_999, "revision": 1}
    )
    return victim.uid


def run(ops: int, uids: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    history = generate(ops, uids, seed=seed)
    generated = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "history.jsonl"
        write_history(path, history, {"source": "bench_checker"})
        started = time.perf_counter()
        loaded = read_history(path)
        read_seconds = time.perf_counter() - started
    assert len(loaded) == len(history)

    clean = check_history(loaded)
    if not clean.ok:
        raise SystemExit(
            "generated history reported a violation:\n"
            + clean.describe()[:4000]
        )

    faulty = list(loaded)
    victim = inject_fault(faulty, seed)
    broken = check_history(faulty)
    found = broken.failed_uids()
    if victim not in found:
        raise SystemExit(f"injected fault on {victim!r} not found: {found}")

    per_uid: dict[str, int] = {}
    for op in loaded:
        per_uid[op.uid] = per_uid.get(op.uid, 0) + 1
    return {
        "operations": len(loaded),
        "uids": len(per_uid),
        "busiest_uid_operations": max(per_uid.values()),
        "outcomes": clean.counts,
        "generate_seconds": round(generated, 3),
        "read_seconds": round(read_seconds, 3),
        "check_seconds": round(clean.elapsed, 3),
        "check_to_read_ratio": round(clean.elapsed / read_seconds, 2),
        "operations_per_second": round(len(loaded) / clean.elapsed),
        "faulty_check_seconds": round(broken.elapsed, 3),
        "fault_found_on": sorted(found),
        "target_seconds": 10.0,
        "within_target": clean.elapsed < 10.0,
        "seed": seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_doc(result: dict[str, Any], command: str) -> None:
    table = "\n".join(
        [
            START,
            f"Measured with `{command}`:",
            "",
            "| operations | uids | busiest uid | read JSONL | check | "
            "check / read | with 1 fault |",
            "|---|---|---|---|---|---|---|",
            f"| {result['operations']:,} | {result['uids']:,} | "
            f"{result['busiest_uid_operations']:,} ops | "
            f"{result['read_seconds']:.2f} s | "
            f"{result['check_seconds']:.2f} s | "
            f"{result['check_to_read_ratio']:.1f} | "
            f"{result['faulty_check_seconds']:.2f} s, found |",
            END,
        ]
    )
    if not DOC.exists():
        return
    text = DOC.read_text(encoding="utf-8")
    if START in text and END in text:
        before = text[: text.index(START)]
        after = text[text.index(END) + len(END) :]
        DOC.write_text(before + table + after, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--uids", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave results and docs alone",
    )
    args = parser.parse_args()
    result = run(args.ops, args.uids, args.seed)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(result, indent=2) + "\n", encoding="utf-8"
        )
        command = "python benchmarks/bench_checker.py"
        if (args.ops, args.uids, args.seed) != (100_000, 1_000, 1):
            command += (
                f" --ops {args.ops} --uids {args.uids} --seed {args.seed}"
            )
        write_doc(result, command)


if __name__ == "__main__":
    main()
