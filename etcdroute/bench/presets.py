"""The scenario sets of ``etcdroute bench --quick`` and ``--full``.

``quick`` (under two minutes, run by CI): one hot-key contention
scenario from two processes, where the naive recipe must be caught, and
one Zipfian scenario from one process.

``full`` (the recorded run of docs/benchmarks.md): a concurrency sweep
on Zipfian 0.99 keys from 1 to 32 callers, single process and
multi-process at the same 16 callers, and a skew sweep at 2 x 8 callers
from uniform keys to a hot-key set; then etcdroute and raw head to
head (running at the same time, 16 callers each, one process or two),
the steadiest measure of their ratio on a shared machine.
"""

from __future__ import annotations

from etcdroute.bench.harness import Scenario
from etcdroute.bench.workload import Workload

QUICK_DURATION = 4.0
FULL_DURATION = 5.0


def hot_workload(seed: int = 1) -> Workload:
    """Eight hot uids take 90 % of the operations: heavy contention."""
    return Workload("hotkey", keys=1_000, hot_keys=8, seed=seed)


def quick(seed: int = 1) -> tuple[Scenario, ...]:
    return (
        Scenario("hot-2x4", hot_workload(seed), 2, 4, QUICK_DURATION),
        Scenario(
            "zipf-1x8",
            Workload("zipfian", keys=10_000, skew=0.99, seed=seed),
            1,
            8,
            QUICK_DURATION,
        ),
    )


def full(seed: int = 1) -> tuple[Scenario, ...]:
    zipf = Workload("zipfian", keys=10_000, skew=0.99, seed=seed)
    scenarios = [
        Scenario(f"zipf-{p}x{t}", zipf, p, t, FULL_DURATION, sweeps=sweeps)
        for p, t, sweeps in (
            (1, 1, ("concurrency",)),
            (1, 4, ("concurrency",)),
            (1, 16, ("concurrency",)),
            (2, 8, ("concurrency", "skew")),
            (4, 8, ("concurrency",)),
        )
    ]
    skews = (
        ("uniform-2x8", Workload("uniform", keys=10_000, seed=seed)),
        ("zipf0.5-2x8", Workload("zipfian", skew=0.5, seed=seed)),
        ("zipf0.9-2x8", Workload("zipfian", skew=0.9, seed=seed)),
        ("hot-2x8", hot_workload(seed)),
    )
    for name, workload in skews:
        scenarios.append(
            Scenario(name, workload, 2, 8, FULL_DURATION, sweeps=("skew",))
        )

    # Head-to-head: etcdroute and raw at the same time, each with its own
    # callers, so both see the same load; single and multi-process.
    for p, t in ((1, 16), (2, 8)):
        scenarios.append(
            Scenario(
                f"duel-{p}x{t}",
                zipf,
                p,
                t,
                FULL_DURATION,
                variants=("etcdroute", "raw"),
                together=True,
            )
        )
    return tuple(scenarios)
