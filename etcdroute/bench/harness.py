"""Run every variant on every scenario against one etcd, and judge them.

For each scenario and round, the variants run one after the other;
neighbours in that order swap places every other round, so no variant
always runs first, and etcdroute always runs next to raw: the ratio of
the two is taken per round (paired), which cancels most of the drift of
a shared machine's load. Each run gets fresh pods: ``pods`` server
drivers register a service of their own, one lease each, and stay
registered until the run's final links are read. Meanwhile the harness
samples etcd's live lease count: with etcdroute it must stay at most
baseline + one per pod and fall back to the baseline once the pods stop
(field report FR13).

Each run is judged by :mod:`etcdroute.bench.invariants`: etcdroute must
show no violation; the naive variant must show some in every contention
(hot-key) scenario, or the check has proved nothing.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from etcdroute.bench.invariants import (
    check_run,
    checker_verdict,
    summarize,
)
from etcdroute.bench.metrics import run_figures
from etcdroute.bench.runner import RunResult, RunSpec, run_together
from etcdroute.bench.variants import VARIANTS, LockClient, PodRef, Target
from etcdroute.bench.workload import Workload
from etcdroute.config import DriverConfig
from etcdroute.driver import ServerDriver
from etcdroute.errors import InvalidArgumentError
from etcdroute.keys import Keyspace
from etcdroute.links import link_from_kv
from etcdroute.store import EtcdStore

logger = logging.getLogger(__name__)

#: Longest wait for leftover leases (the lock recipe's) to end.
SETTLE_TIMEOUT = LockClient.LOCK_TTL + 5.0

#: Pods of a benchmark keep a long lease: no lease may end mid-run.
BENCH_POD_CONFIG = DriverConfig(
    lease_ttl=30, state_interval=5.0, workload_interval=3600.0
)


@dataclass(frozen=True)
class Scenario:
    """One workload at one concurrency; ``sweeps`` place it in plots.

    ``callers`` is per variant: variants run ``together`` use twice the
    callers between them.
    """

    name: str
    workload: Workload
    processes: int
    threads: int
    duration: float
    ops_per_thread: int = 0
    sweeps: tuple[str, ...] = ()
    #: Variants of this scenario (default: the config's).
    variants: tuple[str, ...] = ()
    #: Run the variants at the same time (each with its own callers and
    #: pods) instead of in turn: a head-to-head under the same load.
    together: bool = False

    @property
    def callers(self) -> int:
        return self.processes * self.threads

    @property
    def contention(self) -> bool:
        """Whether the naive variant must be caught here.

        Hot keys raced by more than one caller: a single caller cannot
        race itself, so its naive run is allowed to look correct.
        """
        return self.workload.distribution == "hotkey" and self.callers > 1


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run needs besides the etcd to run on."""

    scenarios: tuple[Scenario, ...]
    history_dir: str
    variants: tuple[str, ...] = VARIANTS
    pods: int = 4
    repeat: int = 1
    prefix: str = "etcdroute"
    timeout: float = 5.0

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise InvalidArgumentError(
                "variants", f"choose among {', '.join(VARIANTS)}"
            )
        if not 1 <= self.pods <= 64:
            raise InvalidArgumentError("pods", "must be in 1..64")
        if not 1 <= self.repeat <= 20:
            raise InvalidArgumentError("repeat", "must be in 1..20")
        if not self.scenarios:
            raise InvalidArgumentError("scenarios", "give at least one")
        for scenario in self.scenarios:
            if set(scenario.variants) - set(VARIANTS):
                raise InvalidArgumentError(
                    "variants", f"scenario {scenario.name}: unknown variant"
                )


class Progress(Protocol):
    """Where the harness reports what it is doing."""

    def begin(self, label: str, duration: float) -> None: ...

    def update(self, ops: int, elapsed: float) -> None: ...

    def end(self, summary: str) -> None: ...


@dataclass
class ScenarioResult:
    """Every run of one scenario, and their aggregate per variant."""

    scenario: Scenario
    runs: list[dict[str, Any]] = field(default_factory=list)

    def variant_runs(self, variant: str) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["variant"] == variant]


class Harness:
    """Runs a :class:`BenchConfig` on one etcd."""

    def __init__(
        self,
        store: EtcdStore,
        endpoints: str,
        config: BenchConfig,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.config = config
        self.progress = progress
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        self._initial_leases = 0
        self.keyspace = Keyspace(config.prefix, self.namespace)
        Path(config.history_dir).mkdir(parents=True, exist_ok=True)

    def run(self) -> list[ScenarioResult]:
        results = []
        self._initial_leases = self.store.lease_count()
        try:
            for scenario in self.config.scenarios:
                result = ScenarioResult(scenario)
                variants = scenario.variants or self.config.variants
                for round_number in range(self.config.repeat):
                    order = _ordered(variants, round_number)
                    groups = (
                        [order]
                        if scenario.together
                        else [[variant] for variant in order]
                    )
                    for group in groups:
                        runs = self.run_group(scenario, group, round_number)
                        result.runs.extend(runs)
                results.append(result)
        finally:
            self.store.delete_prefix(self.keyspace.root)
        return results

    def run_group(
        self, scenario: Scenario, variants: list[str], round_number: int
    ) -> list[dict[str, Any]]:
        """Variants run at the same time on one scenario, each with fresh
        pods of its own; then judged and cleaned up."""
        services = [
            f"{scenario.name}-{variant}-r{round_number}"
            for variant in variants
        ]
        if "etcdroute" in variants:
            self._settle_leases()
        baseline = self.store.lease_count()
        drivers: list[list[ServerDriver]] = []
        samples: list[int] = []
        try:
            for service in services:
                drivers.append(self._start_pods(service))
            specs = [
                self._spec(scenario, variant, service, pods)
                for variant, service, pods in zip(
                    variants, services, drivers, strict=True
                )
            ]
            label = (
                f"{scenario.name} {'+'.join(variants)} "
                f"(round {round_number + 1})"
            )
            if self.progress is not None:
                self.progress.begin(label, scenario.duration)

            def tick(ops: int, elapsed: float) -> None:
                samples.append(self.store.lease_count())
                if self.progress is not None:
                    self.progress.update(ops, elapsed)

            results = run_together(specs, on_tick=tick)
            samples.append(self.store.lease_count())
            finals = [self._final_links(service) for service in services]
        finally:
            for group in drivers:
                for driver in group:
                    driver.stop()
        for service in services:
            self.store.delete_prefix(f"/locks/{self.namespace}/{service}/")
        after = self.store.lease_count()
        allowed = baseline + self.config.pods * len(variants)
        runs = []
        for result, final in zip(results, finals, strict=True):
            run = self._judge(result, final, baseline, allowed, samples, after)
            run["round"] = round_number
            run["together"] = variants
            runs.append(run)
        if self.progress is not None:
            self.progress.end(
                f"{label}: "
                + ", ".join(
                    f"{run['variant']} {run['throughput']:.0f} ops/s "
                    f"{run['violation_count']} violation(s)"
                    for run in runs
                )
            )
        return runs

    def _spec(
        self,
        scenario: Scenario,
        variant: str,
        service: str,
        drivers: list[ServerDriver],
    ) -> RunSpec:
        target = Target(
            endpoints=self.endpoints,
            namespace=self.namespace,
            service=service,
            pods=tuple(_pod_ref(driver) for driver in drivers),
            prefix=self.config.prefix,
            timeout=self.config.timeout,
        )
        return RunSpec(
            variant=variant,
            target=target,
            workload=scenario.workload,
            history_path=str(
                Path(self.config.history_dir) / f"{service}.jsonl"
            ),
            processes=scenario.processes,
            threads=scenario.threads,
            duration=scenario.duration,
            ops_per_thread=scenario.ops_per_thread,
        )

    # ------------------------------------------------------- internals

    def _settle_leases(self) -> None:
        """Let leases an earlier run left behind run out first.

        The lock recipe leaves a lease per acquisition, each ending after
        its TTL; while they end, a leak of etcdroute's own could hide in
        the falling count. So etcdroute's runs wait (a bounded time) for
        the count to come back to where the benchmark started.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.store.lease_count() > self._initial_leases:
            if time.monotonic() > deadline:
                logger.warning(
                    "lease count did not settle in %.0f s; the FR13 check "
                    "of the next run may be blurred",
                    SETTLE_TIMEOUT,
                )
                return
            time.sleep(0.5)

    def _start_pods(self, service: str) -> list[ServerDriver]:
        drivers: list[ServerDriver] = []
        try:
            for pod_id in range(self.config.pods):
                driver = ServerDriver(
                    self.store,
                    namespace=self.namespace,
                    service=service,
                    pod_id=pod_id,
                    address=f"bench-pod-{pod_id}",
                    config=BENCH_POD_CONFIG,
                )
                drivers.append(driver.start())
        except BaseException:
            for driver in drivers:
                driver.stop()
            raise
        return drivers

    def _final_links(self, service: str) -> dict[str, int | None]:
        prefix = self.keyspace.links_prefix(service)
        kvs, _ = self.store.get_prefix(prefix)
        final: dict[str, int | None] = {}
        for kv in kvs:
            uid = self.keyspace.uid_from_link_key(service, kv.key)
            final[uid] = link_from_kv(uid, kv).pod_id
        return final

    def _judge(
        self,
        result: RunResult,
        final: dict[str, int | None],
        baseline: int,
        allowed: int,
        samples: list[int],
        after: int,
    ) -> dict[str, Any]:
        spec = result.spec
        pods = [pod.pod_id for pod in spec.target.pods]
        violations = check_run(result.ops, final, pods)
        peak = max(samples, default=0)
        return {
            "variant": spec.variant,
            **run_figures(result.ops, result.wall),
            "wall_s": result.wall,
            "retries": result.retries,
            "client_cpu_us_per_op": 1e6
            * result.cpu_seconds
            / max(len(result.ops), 1),
            "final_links": len(final),
            "leases": {
                "baseline": baseline,
                "allowed_peak": allowed,
                "peak": peak,
                "after_stop": after,
                "samples": len(samples),
            },
            "lease_ok": peak <= allowed and after <= baseline,
            "violations": summarize(violations),
            "violation_count": len(violations),
            "violation_examples": [
                f"{v.kind} {v.uid}: {v.detail}" for v in violations[:3]
            ],
            "checker": checker_verdict(result.ops),
            "error_samples": result.error_samples,
            "history": spec.history_path,
        }


def _pod_ref(driver: ServerDriver) -> PodRef:
    registration = driver.session.registration
    if registration is None:
        raise RuntimeError(f"pod {driver.pod_id} has no registration")
    return PodRef(
        pod_id=driver.pod_id,
        lease=driver.lease_id,
        revision=registration.revision,
        epoch=driver.epoch,
    )


def _ordered(items: Sequence[str], round_number: int) -> list[str]:
    """Variants in run order: neighbours swap places every other round.

    etcdroute and raw stay next to each other (their ratio is taken per
    round, so a change of machine load between them matters least) and
    neither always runs first.
    """
    order = list(items)
    if round_number % 2:
        for index in range(0, len(order) - 1, 2):
            order[index], order[index + 1] = order[index + 1], order[index]
    return order


# ------------------------------------------------------------ verdicts


def aggregate(result: ScenarioResult, variant: str) -> dict[str, Any]:
    """Median figures over rounds, summed counters, the variant's verdict."""
    runs = result.variant_runs(variant)
    if not runs:
        return {}

    def median(name: str) -> float:
        return float(statistics.median(run[name] for run in runs))

    violations = sum(run["violation_count"] for run in runs)
    flagged = sum(run["checker"]["violations"] for run in runs)
    caught_every_round = all(
        run["violation_count"] > 0 or not run["checker"]["ok"] for run in runs
    )
    return {
        "rounds": len(runs),
        "throughput": median("throughput"),
        "try_set_throughput": median("try_set_throughput"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "p999_ms": median("p999_ms"),
        "client_cpu_us_per_op": median("client_cpu_us_per_op"),
        "ops": sum(run["ops"] for run in runs),
        "conflicts": sum(run["conflicts"] for run in runs),
        "retries": sum(run["retries"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "lease_peak_over_baseline": max(
            run["leases"]["peak"] - run["leases"]["baseline"] for run in runs
        ),
        "lease_ok": all(run["lease_ok"] for run in runs),
        "violations": violations,
        "checker_violations": flagged,
        "verdict": verdict(
            variant, violations, flagged, caught_every_round, result
        ),
    }


def verdict(
    variant: str,
    violations: int,
    flagged: int,
    caught_every_round: bool,
    result: ScenarioResult,
) -> str:
    """Readable verdict; see :func:`failures` for what fails a run.

    ``violations`` counts the end-of-run invariant violations, ``flagged``
    the history checker's; both are shown as ``invariants/checker``.
    """
    counts = f"{violations}/{flagged}"
    if variant == "naive":
        if caught_every_round:
            return f"caught {counts}"
        if result.scenario.contention:
            return "NOT CAUGHT"
        return f"{counts} (no contention)"
    if violations or flagged:
        return f"VIOLATED {counts}"
    return "correct"


def failures(results: list[ScenarioResult]) -> list[str]:
    """Why the run fails its correctness bar (speed never fails it)."""
    found = []
    for result in results:
        name = result.scenario.name
        for run in result.runs:
            label = f"{name} {run['variant']} round {run['round'] + 1}"
            checker = run["checker"]
            checker_failed = checker is not None and not checker.get("ok")
            if run["variant"] == "etcdroute":
                if run["violation_count"] or checker_failed:
                    found.append(f"{label}: etcdroute violated ownership")
                if not run["lease_ok"]:
                    found.append(
                        f"{label}: lease count {run['leases']} exceeds "
                        "baseline + one per pod (FR13)"
                    )
            if run["violation_count"] and not checker_failed:
                # The invariants saw a broken run the checker called
                # linearizable: the checker itself would be wrong.
                found.append(f"{label}: checker missed {run['violations']}")
            if (
                run["variant"] == "naive"
                and result.scenario.contention
                and run["violation_count"] == 0
                and not checker_failed
            ):
                found.append(f"{label}: naive violations not detected")
    return found


def ratios(result: ScenarioResult) -> dict[str, float | None]:
    """etcdroute's throughput over raw's and over lock's.

    The median of the per-round ratios (each round's runs are
    neighbours in time); None when a variant did not run.
    """
    ours = {run["round"]: run for run in result.variant_runs("etcdroute")}
    found: dict[str, float | None] = {}
    for other in ("raw", "lock"):
        paired = [
            ours[run["round"]]["throughput"] / run["throughput"]
            for run in result.variant_runs(other)
            if run["round"] in ours and run["throughput"] > 0
        ]
        found[f"etcdroute/{other}"] = (
            float(statistics.median(paired)) if paired else None
        )
    return found
